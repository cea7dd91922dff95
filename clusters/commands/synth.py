"""``pairforge synth``: parse arguments into a :class:`SynthConfig`, call :func:`pipeline.synth`,
print the dataset URL last."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

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


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("synth", help="synthesize LR/HR pairs into WebDataset shards",
                              description="Synthesize degraded LR/HR pairs into WebDataset shards at "
                                          "OUT/<dataset-id>/. The dataset URL is the last line of stdout.")
    p.add_argument("--source", required=True,
                   help="'bundled', a folder, s3://bucket/prefix, a .txt list of paths/URLs, or a WebDataset "
                        "(.tar, brace pattern, folder of tars, pairforge dataset)")
    p.add_argument("--out", required=True, help="output root (local path, file:// or s3://)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", default="realesrgan-x4plus", help="degradation preset name (default %(default)s)")
    g.add_argument("--config", help="degradation config YAML file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patches-per-image", type=int, default=4, help="HR patches per source image (N)")
    p.add_argument("--views", type=int, default=1, help="degraded LR views per HR patch (K)")
    p.add_argument("--workers", type=int, default=None,
                   help="degradation workers (Ray actors); default: one per GPU, else one per core")
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster (default: embedded local Ray)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run of the same job")
    p.add_argument("--images-per-shard", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=None, help="HR patch side (default: the preset's hr_size)")
    p.add_argument("--min-size-policy", choices=["skip", "upscale"], default="skip",
                   help="images smaller than a patch: skip them or upscale them (default %(default)s)")
    p.add_argument("--hr-format", choices=["png", "webp", "jpg"], default="png",
                   help="HR encoding (png/webp lossless; jpg is lossy)")
    p.add_argument("--lr-format", choices=["png", "webp"], default="png")
    p.add_argument("--batch-size", type=int, default=32, help="patches per degradation call")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--cpus-per-worker", type=float, default=None)
    p.add_argument("--executor", choices=["ray", "inline"], default="ray",
                   help="'inline' runs in this process without Ray (debugging)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


#: at most this many failed objects are listed one per line (a big job can fail thousands)
MAX_FAILURE_LINES = 20


def run(args: argparse.Namespace) -> int:
    """Run the job; exit 0 only once the manifest is written (every shard confirmed in the store),
    1 when objects could not be stored (each named with its last error), 2 for unusable arguments."""
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from pairforge.pipeline import JobError, SourceError, synth
    from pairforge.pipeline.storage import StorageError

    try:
        res = synth(args.source, args.out, build_config(args))
    except (SourceError, JobError, ValueError) as exc:
        print(f"pairforge synth: error: {with_option(str(exc))}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"pairforge synth: error: {exc}", file=sys.stderr)
        return 1
    if res.ok:
        t = res.manifest["totals"]
        print(f"{res.status}: {t['samples']} pairs in {t['shards']} shards from {t['inputs']} inputs "
              f"({t['skipped_inputs']} skipped{': ' + str(t['skipped_by_reason']) if t['skipped_inputs'] else ''})")
        _print_listing_skips(res.manifest.get("source", {}))
    else:
        _print_failure(res)
    print(res.url)
    sys.stdout.flush()
    return 0 if res.ok else 1


def build_config(args: argparse.Namespace):
    """The :class:`SynthConfig` the parsed options ask for (loaded and checked like a config file)."""
    from pairforge.config import set_dotted
    from pairforge.pipeline import SynthConfig

    plain: dict[str, Any] = {}
    for dest, path in FIELDS.items():
        set_dotted(plain, path, getattr(args, dest))
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
    from pairforge.pipeline.execution import NOT_RUN

    shards = [n for n in res.failed if n != "manifest.json"]
    print(f"failed: {len(shards)} of {res.shards_total} shards not committed"
          f"{' (and manifest.json not written)' if 'manifest.json' in res.failed else ''}; no manifest; "
          "re-run with --resume", file=sys.stderr)
    errors = sorted((n, e) for n, e in res.failed.items() if not e.startswith(NOT_RUN))
    for name, err in errors[:MAX_FAILURE_LINES]:
        print(f"  {name}: {err}", file=sys.stderr)
    if len(errors) > MAX_FAILURE_LINES:
        print(f"  ... and {len(errors) - MAX_FAILURE_LINES} more", file=sys.stderr)
    not_run = sorted(n for n, e in res.failed.items() if e.startswith(NOT_RUN))
    if not_run:
        print(f"  {len(not_run)} shard(s) not run ({not_run[0]} ...): {res.failed[not_run[0]][len(NOT_RUN):]}",
              file=sys.stderr)
