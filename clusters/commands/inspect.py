"""``pairforge inspect DATASET``: totals, per-shard table, parameter histograms, contact sheet.

``pairforge inspect --verify DATASET`` instead checks every shard's size and sha256 against the
manifest and exits 1 when any shard is damaged.

Exit status: 0 done (``--verify``: every shard intact); 1 a shard is damaged; 2 the dataset
cannot be read (missing, unfinished, not a pairforge dataset). ``--json`` prints the result as
one JSON object, the only line on stdout.
"""
from __future__ import annotations

import argparse
import json

#: exit status when a shard does not match its manifest entry (2 is for unusable arguments/datasets)
EXIT_DAMAGED = 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="summarize a pairforge dataset (tables, histograms, contact sheet)",
                              description="Summarize a pairforge dataset: totals, per-shard table, "
                                          "degradation-parameter histograms and an HR | LR contact sheet. "
                                          "With --verify, check every shard against the manifest instead.",
                              epilog=f"exit status: 0 done; {EXIT_DAMAGED} a shard is damaged; 2 the dataset "
                                     "cannot be read (missing, unfinished, not a pairforge dataset)")
    p.add_argument("dataset", help="dataset folder URL (local path, file:// or s3://) holding manifest.json")
    p.add_argument("--out", default=None, help="folder for the PNGs (default ./inspect-<dataset-id>)")
    p.add_argument("--samples", type=int, default=8, help="rows in the contact sheet")
    p.add_argument("--max-records", type=int, default=2000, help="samples read for the histograms")
    p.add_argument("--verify", action="store_true",
                   help="only check every shard's size and sha256 against the manifest (reads every byte once); "
                        f"exit {EXIT_DAMAGED} if any shard is damaged")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (with --verify)")
    p.add_argument("--json", action="store_true",
                   help="print the report (or the --verify result) as one JSON object on one line of stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from pairforge.errors import UsageError, WorkFailed
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import StorageError

    try:
        return _verify(args) if args.verify else _report(args)
    except ShardIntegrityError as exc:
        raise WorkFailed(f"{exc}\n(run `pairforge inspect --verify` to check every shard)") from exc
    except FileNotFoundError as exc:  # not a dataset: no manifest there
        raise UsageError(str(exc)) from exc
    except StorageError as exc:  # unreachable before anything was read: the address or the network to check
        if isinstance(exc, UsageError):
            raise
        raise UsageError(str(exc)) from exc


def _report(args: argparse.Namespace) -> int:
    from pairforge.pipeline.inspect import format_report, inspect_dataset

    report = inspect_dataset(args.dataset, args.out, samples=args.samples, max_records=args.max_records)
    print(json.dumps(report, default=str) if args.json else format_report(report))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pairforge.pipeline.inspect import format_verify, verify_dataset

    result = verify_dataset(args.dataset, progress=not args.no_progress)
    print(json.dumps(result, default=str) if args.json else format_verify(result))
    return EXIT_DAMAGED if result["damaged"] else 0

