"""``pairforge presets [NAME]``: the bundled degradation and training presets, or one resolved.

Without NAME it lists both kinds with each preset's one-line summary (the first comment line
of its YAML file). With NAME it prints the fully resolved config (``base:`` chain merged,
every default filled in) as YAML, or with ``--json`` as one JSON object: exactly what
``synth``/``degrade``/``train --preset NAME`` would run with.

Listing reads the YAML folders only (no torch import), so the other commands' ``--help`` can
name the presets too (:func:`preset_names`).
"""
from __future__ import annotations

import argparse
import json

from pairforge.clusters.presets_catalog import KINDS, names_help, preset_names, summary
from pairforge.errors import UsageError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "presets", help="list degradation and training presets, or print one resolved",
        description="Without NAME: list the bundled degradation presets (synth, degrade) and training "
                    "presets (train), one line each. With NAME: print that preset's resolved config "
                    "(its base: chain merged, every default filled in) as YAML.",
        epilog=f"degradation presets: {names_help('degradation')}; training presets: {names_help('training')}")
    p.add_argument("name", nargs="?", metavar="NAME", help="a preset to print resolved (default: list them all)")
    p.add_argument("--kind", choices=sorted(KINDS),
                   help="which kind NAME is (needed only when a name exists in both kinds)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout (the listing, or the resolved config)")
    return p


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        return _list(args)
    kinds = [args.kind] if args.kind else [k for k in KINDS if args.name in preset_names(k)]
    if not kinds or args.name not in preset_names(kinds[0]):
        raise UsageError(f"no {args.kind or 'degradation or training'} preset named {args.name!r}; "
                         f"degradation: {names_help('degradation')}; training: {names_help('training')}")
    if len(kinds) > 1:
        raise UsageError(f"{args.name!r} is both a degradation and a training preset; "
                         "pass --kind degradation or --kind training")
    config = resolved(kinds[0], args.name)
    if args.json:
        print(json.dumps({"kind": kinds[0], "name": args.name, "config": config}, default=str))
    else:
        import yaml

        print(f"# {kinds[0]} preset {args.name}, resolved (used by: {KINDS[kinds[0]][1]})")
        print(yaml.safe_dump(config, sort_keys=False, default_flow_style=None).rstrip())
    return 0


def resolved(kind: str, name: str) -> dict:
    """The preset's full config as plain data, as the commands that use it would load it."""
    if kind == "degradation":
        from pairforge.degradations import load_preset

        return load_preset(name).to_dict()
    from pairforge.training.config import load_config

    return load_config(preset=name).to_dict()


def _list(args: argparse.Namespace) -> int:
    listing = {kind: [{"name": n, "summary": summary(kind, n)} for n in preset_names(kind)] for kind in KINDS}
    if args.json:
        print(json.dumps(listing))
        return 0
    width = max(len(p["name"]) for items in listing.values() for p in items)
    for kind, items in listing.items():
        print(f"{kind} presets (pairforge {KINDS[kind][1]} --preset NAME):")
        for p in items:
            print(f"  {p['name']:<{width}}  {p['summary']}")
    print("`pairforge presets NAME` prints one resolved.")
    return 0
