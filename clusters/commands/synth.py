"""``pairforge synth``: parse arguments into a :class:`SynthConfig`, call :func:`pipeline.synth`,
print the dataset URL last (or with ``--json``, one JSON object) — only when the dataset is
complete: a failed job names its dataset folder on stderr, never on stdout.

Ctrl-C ends the job with one line on stderr saying how many shards were kept and the exact
command that continues it (the user's own arguments plus ``--resume``), exit 130; a second
Ctrl-C while the first is being cleaned up exits at once (the embedded Ray's watchdog still
removes its processes; see pipeline/raysession.py).  A dataset that another live ``synth``
holds is refused with exit 3 naming the holder (pairforge/runlock.py).  What Ray workers print
goes to the log file (``<dataset>/logs/synth-*.log``), not the terminal.

Before anything is listed or started: a ``--ray-address`` must answer a TCP connect within
:data:`RAY_CONNECT_TIMEOUT_S`, and ``--device cuda`` needs CUDA here (embedded Ray or inline).
``--dry-run`` lists the source and prints the plan (dataset id, usable and skipped inputs,
pairs, shards, estimated bytes) without writing anything or starting Ray.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import sys
from typing import Any

from pairforge.errors import EXIT_INTERRUPTED, UsageError

#: each option's field in :class:`pipeline.SynthConfig` (argparse dest → dotted path); the one
#: place the CLI and the config meet, also used to name the option in a config error
FIELDS = {
    "seed": "dataset.seed",
    "views": "dataset.views",
    "images_per_shard": "dataset.images_per_shard",
    "patch_size": "dataset.patch.size",
    "patches_per_image": "dataset.patch.per_image",
    "min_size_policy": "dataset.patch.min_size_policy",
    "hr_format": "dataset.encode.hr_format",
    "lr_format": "dataset.encode.lr_format",
    "executor": "run.executor",
    "workers": "run.workers",
    "ray_address": "run.ray_address",
    "device": "run.device",
    "batch_size": "run.batch_size",
    "cpus_per_worker": "run.cpus_per_worker",
    "resume": "run.resume",
}
#: a Ray cluster that does not accept a TCP connection within this many seconds is unreachable
RAY_CONNECT_TIMEOUT_S = 5.0
#: ports Ray listens on when an address names none: the client server (ray://) and the GCS
RAY_CLIENT_PORT, RAY_GCS_PORT = 10001, 6379
EXIT_CODES = ("exit status: 0 the dataset is complete; 1 the work failed (objects not stored, or no pairs "
              "produced); 2 bad arguments or environment (found before any work starts); 3 the dataset is in "
              "use by another live synth; 130 interrupted (Ctrl-C: the line printed says how to continue)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pairforge.clusters.presets_catalog import names_help

    p = subparsers.add_parser("synth", help="synthesize LR/HR pairs into WebDataset shards",
                              description="Synthesize degraded LR/HR pairs into WebDataset shards at "
                                          "OUT/<dataset-id>/. The dataset URL is the last line of stdout.",
                              epilog=EXIT_CODES)
    p.add_argument("--source", required=True,
                   help="'bundled', a folder, s3://bucket/prefix, a .txt list of paths/URLs, or a WebDataset "
                        "(.tar, brace pattern, folder of tars, pairforge dataset)")
    p.add_argument("--out", required=True, help="output root (local path, file:// or s3://)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="realesrgan-x4plus",
                   help=f"degradation preset: {names_help('degradation')} (default %(default)s; "
                        "`pairforge presets NAME` prints one)")
    g.add_argument("--config", help="degradation config YAML file (may start from `base: PRESET`)")
    p.add_argument("--seed", type=int, default=0, help="random seed of crops and degradations (default %(default)s)")
    p.add_argument("--patches-per-image", type=int, default=4, help="HR patches per source image (N)")
    p.add_argument("--views", type=int, default=1, help="degraded LR views per HR patch (K)")
    p.add_argument("--workers", type=int, default=None,
                   help="degradation workers (Ray actors); default: one per GPU, else one per core")
    p.add_argument("--ray-address", default=None,
                   help="join an existing Ray cluster: HOST:PORT, ray://HOST:PORT or auto "
                        "(default: embedded local Ray); checked with a TCP connect first")
    p.add_argument("--resume", nargs="?", const="auto", choices=["auto", "none"], default="none",
                   help="continue an interrupted run of the same job (`--resume` alone means auto)")
    p.add_argument("--images-per-shard", type=int, default=64, help="source images per shard (default %(default)s)")
    p.add_argument("--patch-size", type=int, default=None, help="HR patch side (default: the preset's hr_size)")
    p.add_argument("--min-size-policy", choices=["skip", "upscale"], default="skip",
                   help="images smaller than a patch: skip them or upscale them (default %(default)s)")
    p.add_argument("--hr-format", choices=["png", "webp", "jpg"], default="png",
                   help="HR encoding (png/webp lossless; jpg is lossy)")
    p.add_argument("--lr-format", choices=["png", "webp"], default="png", help="LR encoding (both lossless)")
    p.add_argument("--batch-size", type=int, default=32, help="patches per degradation call")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where workers degrade (auto: a GPU when the node has one)")
    p.add_argument("--cpus-per-worker", type=float, default=None, help="Ray CPUs reserved per worker")
    p.add_argument("--executor", choices=["ray", "inline"], default="ray",
                   help="'inline' runs in this process without Ray (debugging)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the source and print the plan (dataset id, usable and skipped inputs with "
                        "reasons, pairs, shards, estimated bytes); write nothing, start nothing")
    p.add_argument("--json", action="store_true",
                   help="print the result (or with --dry-run the plan) as one JSON object on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


#: at most this many failed objects are listed one per line (a big job can fail thousands)
MAX_FAILURE_LINES = 20


def run(args: argparse.Namespace) -> int:
    """Run the job; exit 0 only once the manifest is written (every shard confirmed in the store)
    and it holds pairs, 1 when objects could not be stored (each named with its last error) or
    no pairs came out, 2 for unusable arguments or environment (before any work), 3 when another
    live synth holds the dataset, 130 after Ctrl-C."""
    from pairforge.pipeline.execution import log_worker_output

    log_worker_output(True)  # Ray workers' output (tracebacks included) into the log file
    previous = signal.signal(signal.SIGINT, _first_interrupt)
    try:
        return _run(args)
    except KeyboardInterrupt as exc:
        return interrupted(exc, args)
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_interrupt(signum, frame) -> None:
    """Ctrl-C: stop the job (a KeyboardInterrupt, cleaned up on the way out); another Ctrl-C
    during that cleanup exits at once."""
    signal.signal(signal.SIGINT, _second_interrupt)
    raise KeyboardInterrupt


def _second_interrupt(signum, frame) -> None:
    sys.stderr.write("pairforge synth: interrupted again: exiting without waiting for the cleanup "
                     "(committed shards are kept; an embedded Ray is stopped by its watchdog)\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    """Errors of pairforge's family end the command through the CLI (pairforge/errors.py): a
    config or source the job cannot use (2, naming the option), a store that failed (1), another
    live synth on the dataset (3).  A config field's message gains its option name here."""
    from pairforge.pipeline import synth

    try:
        config = build_config(args)
        check_environment(config.run)
        if args.dry_run:
            return dry_run(args.source, args.out, config, as_json=args.json)
        res = synth(args.source, args.out, config)
    except UsageError as exc:  # ConfigError, SourceError, JobError, the environment checks' own
        raise UsageError(with_option(str(exc))) from exc
    except ConnectionError as exc:  # the Ray cluster accepted the TCP connect but not the session
        if not config.run.ray_address:
            raise
        raise UsageError(f"run.ray_address (--ray-address): cannot connect to the Ray cluster at "
                         f"{config.run.ray_address}: {exc}") from exc
    keep_log(res.url, "synth")
    return report(res, as_json=args.json)


def interrupted(exc: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """After Ctrl-C: one line, what was kept and the command that continues; exit 130."""
    from pairforge.pipeline import storage
    from pairforge.pipeline.job import JobInterrupted

    signal.signal(signal.SIGINT, _second_interrupt)  # from here on, only the line and the log are left
    if getattr(args, "dry_run", False):
        print("pairforge synth: interrupted (--dry-run: nothing was written)", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(exc, JobInterrupted):
        from pairforge.logs import write_log

        write_log(exc.url, "synth")  # in the dataset's logs/, said nowhere else: the line below is all
        kept = (f"{exc.committed} of {exc.total} shards committed and kept in {storage.redact(exc.url)}"
                if exc.committed else f"no shard was committed yet in {storage.redact(exc.url)}")
    else:
        kept = "before the job started: nothing was written"
    print(f"pairforge synth: interrupted: {kept}; continue with: {resume_command(args)}", file=sys.stderr)
    sys.stderr.flush()
    return EXIT_INTERRUPTED


def resume_command(args: argparse.Namespace, argv: list[str] | None = None) -> str:
    """The command line that continues this job: the user's own arguments (``sys.argv``) with any
    ``--resume`` option replaced by ``--resume`` at the end; rebuilt from the parsed options when
    this process was not started as ``pairforge … synth …`` (a Python caller of ``main``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "synth" not in argv:
        argv = ["synth", *_options_of(args)]
    kept: list[str] = []
    skip_value = False
    for a in argv:
        if skip_value:
            skip_value = False
            if a in ("auto", "none"):
                continue
        name = a.split("=", 1)[0]
        if len(name) > 4 and "--resume".startswith(name):  # --resume, --resume=auto and argparse's abbreviations
            skip_value = "=" not in a
            continue
        kept.append(a)
    return shlex.join(["pairforge", *kept, "--resume"])


def _options_of(args: argparse.Namespace) -> list[str]:
    """Options that reproduce ``args`` (those that differ from their defaults; ``--resume`` left out)."""
    parser = argparse.ArgumentParser(add_help=False)
    sub = parser.add_subparsers(dest="command")
    defaults = vars(add_parser(sub).parse_args(["--source", "x", "--out", "y"]))
    out: list[str] = []
    for dest, value in vars(args).items():
        if dest in ("resume", "command", "verbose", "verbose_all") or dest not in defaults:
            continue
        if dest in ("source", "out") or value != defaults[dest]:
            flag = "--" + dest.replace("_", "-")
            if value is True:
                out.append(flag)
            elif value not in (None, False):
                out += [flag, str(value)]
    return out


def keep_log(folder_url: str, command: str) -> None:
    """This run's log (third-party chatter kept off the terminal) into the dataset's ``logs/``."""
    from pairforge.logs import third_party_count, write_log
    from pairforge.pipeline import storage

    url = write_log(folder_url, command)
    if url and third_party_count():
        print(f"pairforge {command}: {third_party_count()} third-party message(s) kept off the terminal: "
              f"{storage.redact(url)} (-v shows them)", file=sys.stderr)


def report(res, *, as_json: bool = False) -> int:
    """The result on stdout (a summary and the dataset URL last, or one JSON object), what went
    wrong on stderr; the exit status.  Without ``--json`` the URL is printed only for a complete
    dataset with pairs: a script taking stdout's last line never gets a failed job's folder."""
    empty = res.ok and not res.manifest["totals"]["samples"]
    if empty:
        print(f"pairforge synth: error: {no_pairs_reason(res.manifest)}", file=sys.stderr)
    if not res.ok:
        _print_failure(res)
    if as_json:
        print(json.dumps(result_json(res, empty)))
    elif res.ok and not empty:
        t = res.manifest["totals"]
        print(f"{res.status}: {t['samples']} pairs in {t['shards']} shards from {t['inputs']} inputs "
              f"({skipped_summary(t)})")
        _print_listing_skips(res.manifest.get("source", {}))
        print(res.url)
    sys.stdout.flush()
    return 0 if res.ok and not empty else 1


def skipped_summary(totals: dict) -> str:
    """"3 inputs skipped, 2 patches dropped: {reason: count}": patches dropped from usable images
    (one-colour or fill-dominated) are shown even when no whole input was skipped."""
    inputs, patches = totals["skipped_inputs"], totals.get("skipped_patches", 0)
    text = f"{inputs} skipped" + (f", {patches} patches dropped" if patches else "")
    return text + (f": {totals['skipped_by_reason']}" if inputs or patches else "")


# --------------------------------------------------------------------------- checks before any work
def check_environment(run) -> None:
    """What the run needs from this machine and the network, checked in seconds; ValueError names
    the option."""
    if run.executor == "ray":
        endpoint = ray_endpoint(run.ray_address)
        if endpoint is not None:
            _check_reachable(run.ray_address, *endpoint)
    local_devices = run.executor == "inline" or not run.ray_address
    if run.device == "cuda" and local_devices:
        import torch

        if not torch.cuda.is_available():
            raise UsageError("run.device: --device cuda asked for, but CUDA is not available on this machine "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use "
                             "--device auto or cpu, or run on a GPU node")


def ray_endpoint(address: str | None) -> tuple[str, int] | None:
    """``(host, port)`` that a Ray address connects to; None for the embedded Ray and ``auto``
    (a cluster found on this machine) and schemes Ray resolves itself."""
    if not address or address == "auto":
        return None
    if address.startswith("ray://"):
        rest, default = address[len("ray://"):], RAY_CLIENT_PORT
    elif "://" in address:
        return None
    else:
        rest, default = address, RAY_GCS_PORT
    rest = rest.split("/", 1)[0]
    host, sep, port = rest.rpartition(":")
    if not sep or host.endswith(":") or (host.startswith("[") and not host.endswith("]")):
        host, port = rest, str(default)  # no port, or a bare IPv6 address
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise UsageError(f"run.ray_address: {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    return host, int(port)


def _check_reachable(address: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=RAY_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UsageError(f"run.ray_address: cannot reach the Ray cluster at {address} ({host}:{port}: {why} "
                         f"within {RAY_CONNECT_TIMEOUT_S:.0f} s); check the address, or start the cluster "
                         "(`ray start --head`), or leave --ray-address out for an embedded local Ray") from None


# --------------------------------------------------------------------------- results
def no_pairs_reason(manifest: dict) -> str:
    """Why a finished job holds no pairs, and what would change that."""
    t = manifest["totals"]
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(t.get("skipped_by_reason", {}).items())) or "no inputs"
    hint = ""
    small = t.get("skipped_by_reason", {}).get("too_small", 0)
    if small:
        hint = (f"; {small} input(s) are smaller than the {manifest['hr_size']}px patch: pass a smaller "
                "--patch-size or --min-size-policy upscale")
    return (f"the job produced no pairs: all {t['inputs']} inputs were skipped ({reasons}){hint}; "
            "`pairforge synth --dry-run` lists each input's reason")


def result_json(res, empty: bool) -> dict:
    """The machine-readable result: where the dataset is and what it holds, or what failed."""
    out: dict[str, Any] = {"ok": res.ok and not empty, "status": res.status, "url": res.url,
                           "dataset_id": res.dataset_id, "shards_total": res.shards_total}
    if res.ok:
        t = res.manifest["totals"]
        out.update(pairs=t["samples"], shards=t["shards"], inputs=t["inputs"], skipped_inputs=t["skipped_inputs"],
                   skipped_by_reason=t["skipped_by_reason"], bytes=t["bytes"],
                   listing_skipped_by_reason=res.manifest.get("source", {}).get("skipped_by_reason", {}))
    else:
        out["failed"] = res.failed
    if empty:
        out["error"] = "no pairs produced"
    return out


# --------------------------------------------------------------------------- --dry-run
#: skipped inputs listed one per line (the rest counted)
MAX_SKIP_LINES = 20


def dry_run(source: str, out: str, config, *, as_json: bool = False) -> int:
    """Print the plan (:func:`pipeline.plan.dry_run_plan`): exit 0, or 1 when it would produce no pairs."""
    from pairforge.pipeline.plan import dry_run_plan

    report = dry_run_plan(source, out, config.dataset)
    if as_json:
        print(json.dumps(report, default=str))
    else:
        print(format_plan(report, config.dataset))
    if not report["pairs"]:
        print("pairforge synth: error: this job would produce no pairs (every input skipped; reasons above)",
              file=sys.stderr)
    return 0 if report["pairs"] else 1


def format_plan(r: dict, dataset) -> str:
    """The plan as text; the dataset URL is the last line, as after a real run."""
    from pairforge.pipeline.inspect import human_bytes

    lines = [f"dataset:  {r['dataset_id']} — {r['state']}",
             f"preset:   {r['preset']} (×{r['scale']}, HR {r['hr_size']}px)",
             f"inputs:   {r['inputs']} listed, {r['usable_inputs']} usable, {len(r['skipped_inputs'])} would be "
             f"skipped{_by_reason(r['skipped_inputs'])}"]
    for s in r["skipped_inputs"][:MAX_SKIP_LINES]:
        lines.append(f"  skip {s['name']}: {s['reason']}{' (' + s['detail'] + ')' if s['detail'] else ''}")
    if len(r["skipped_inputs"]) > MAX_SKIP_LINES:
        lines.append(f"  ... and {len(r['skipped_inputs']) - MAX_SKIP_LINES} more (--json lists all)")
    if r["listing_skipped"] or r["ignored_files"]:
        lines.append(f"listing:  {len(r['listing_skipped'])} left out{_by_reason(r['listing_skipped'])}, "
                     f"{r['ignored_files']} non-image files ignored")
        for s in r["listing_skipped"][:MAX_SKIP_LINES]:
            lines.append(f"  left out {s['name']}: {s['reason']}")
    lines += [f"pairs:    {r['pairs']} ({r['usable_inputs']} inputs × {dataset.patch.per_image} patches; "
              f"{r['lr_images']} LR images at {dataset.views} view(s) each)",
              f"shards:   {r['shards']} ({r['images_per_shard']} inputs per shard)",
              f"bytes:    ~{human_bytes(r['estimated_bytes'])} (estimate: {dataset.encode.hr_format} HR, "
              f"{dataset.encode.lr_format} LR)",
              r["url"]]
    return "\n".join(lines)


def _by_reason(skips: list[dict]) -> str:
    counts: dict[str, int] = {}
    for s in skips:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})" if counts else ""


def build_config(args: argparse.Namespace):
    """The :class:`SynthConfig` the parsed options ask for (loaded and checked like a config file)."""
    from pairforge.config import set_dotted
    from pairforge.pipeline import SynthConfig

    plain: dict[str, Any] = {}
    for dest, path in FIELDS.items():
        set_dotted(plain, path, getattr(args, dest))
    set_dotted(plain, "run.resume", args.resume in (True, "auto"))  # `--resume` alone means auto
    set_dotted(plain, "dataset.degradation", args.config or args.preset)
    set_dotted(plain, "run.progress", not args.no_progress)
    return SynthConfig.from_dict(plain)


def with_option(message: str) -> str:
    """``dataset.views: …`` → ``dataset.views (--views): …``, so a config error names the option too."""
    path, sep, rest = message.partition(":")
    if path == "dataset.degradation" or path.startswith("dataset.degradation."):
        option = "--preset/--config"
    else:
        option = next(("--" + dest.replace("_", "-") for dest, p in FIELDS.items() if p == path), None)
    return f"{path} ({option}){sep}{rest}" if sep and option else message


def _print_listing_skips(source: dict) -> None:
    """Files and folders the listing left out (unreadable, duplicate links, …), by reason."""
    by_reason = source.get("skipped_by_reason") or {}
    if by_reason:
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items()))
        print(f"listing: {sum(by_reason.values())} files/folders left out: {reasons} "
              "(names and details in job.json's source)")


def _print_failure(res) -> None:
    """Each object that failed, with its last error; shards a stopped run never got to, counted."""
    from pairforge.pipeline import storage
    from pairforge.pipeline.execution import NOT_RUN

    shards = [n for n in res.failed if n != "manifest.json"]
    print(f"failed: {len(shards)} of {res.shards_total} shards not committed"
          f"{' (and manifest.json not written)' if 'manifest.json' in res.failed else ''} in "
          f"{storage.redact(res.url)}; no manifest; re-run with --resume", file=sys.stderr)
    errors = sorted((n, e) for n, e in res.failed.items() if not e.startswith(NOT_RUN))
    for name, err in errors[:MAX_FAILURE_LINES]:
        print(f"  {name}: {err}", file=sys.stderr)
    if len(errors) > MAX_FAILURE_LINES:
        print(f"  ... and {len(errors) - MAX_FAILURE_LINES} more", file=sys.stderr)
    not_run = sorted(n for n, e in res.failed.items() if e.startswith(NOT_RUN))
    if not_run:
        print(f"  {len(not_run)} shard(s) not run ({not_run[0]} ...): {res.failed[not_run[0]][len(NOT_RUN):]}",
              file=sys.stderr)
