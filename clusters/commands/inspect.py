"""``pairforge inspect DATASET``: totals, per-shard table, parameter histograms, contact sheet."""
from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="summarize a pairforge dataset (tables, histograms, contact sheet)",
                              description="Summarize a pairforge dataset: totals, per-shard table, "
                                          "degradation-parameter histograms and an HR | LR contact sheet.")
    p.add_argument("dataset", help="dataset folder URL (local path, file:// or s3://) holding manifest.json")
    p.add_argument("--out", default=None, help="folder for the PNGs (default ./inspect-<dataset-id>)")
    p.add_argument("--samples", type=int, default=8, help="rows in the contact sheet")
    p.add_argument("--max-records", type=int, default=2000, help="samples read for the histograms")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    return p


def run(args: argparse.Namespace) -> int:
    from pairforge.pipeline.inspect import format_report, inspect_dataset

    try:
        report = inspect_dataset(args.dataset, args.out, samples=args.samples, max_records=args.max_records)
    except (FileNotFoundError, ValueError) as exc:
        print(f"pairforge inspect: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, default=str) if args.json else format_report(report))
    return 0
