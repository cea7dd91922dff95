"""``pairforge export DATASET OUT``: a dataset's pairs as PNG folders (``hr/``, ``lr/``) with
BasicSR's ``meta_info.txt``, for training code that reads image folders (pipeline/export.py)."""
from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", help="write a dataset's pairs as hr/ and lr/ PNG folders (BasicSR's paired layout)",
        description="Write a pairforge dataset's pairs as PNG folders: OUT/hr/KEY.png, OUT/lr/KEY.png (LR view 0; "
                    "with --views all also OUT/lr_view1/ …, same names), OUT/meta_info.txt (BasicSR's meta_info_file: "
                    "`KEY.png (H,W,3)` per line) and OUT/export.json. Every shard is verified as it is read. The "
                    "folder is built as OUT.partial and renamed when complete; repeat the command to finish one "
                    "that was interrupted.",
        epilog="BasicSR: type PairedImageDataset, dataroot_gt OUT/hr, dataroot_lq OUT/lr, "
               "meta_info_file OUT/meta_info.txt, filename_tmpl '{}'. Exit status: 0 written; 1 a shard is "
               "damaged (OUT.partial is kept); 2 bad arguments, OUT exists, or not a finished dataset.")
    p.add_argument("dataset", help="a pairforge dataset (folder, file:// or s3:// URL)")
    p.add_argument("out", help="a new local folder to write")
    p.add_argument("--limit", type=int, default=None, help="export at most this many pairs")
    p.add_argument("--shards", default=None,
                   help="comma-separated shard indices or names to export (default: every shard)")
    p.add_argument("--views", choices=("first", "all"), default="first",
                   help="first: LR view 0 in lr/ (default); all: view j in lr_view<j>/ as well")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pairforge.pipeline.export import export_folders

    shards = None if args.shards is None else [int(s) if s.strip().isdigit() else s.strip()
                                               for s in args.shards.split(",") if s.strip()]
    with tqdm(unit="pair", desc="export", file=sys.stderr, disable=True if args.no_progress else None) as bar:
        res = export_folders(args.dataset, args.out, limit=args.limit, shards=shards, views=args.views,
                             on_pair=lambda: bar.update(1))
    print(f"exported {res.pairs} pairs ({res.views} LR view(s)) from {len(res.shards)} shard(s) to {res.out}")
    return 0
