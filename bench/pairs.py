"""Reading pairforge pairs: ``PairDataset`` (any trainer's loader) and ``export`` beside the
plain verified reader, and beside what pairforge's trainer consumes.

    python bench/pairs.py [--patch 128] [--per-image 8] [--trainer-samples-per-s 1.97]

Synthesizes a dataset from the bundled photos (inline executor, CPU) into a temporary folder,
then times, on the same shards, one epoch each:

* **read_pairs** — the verified reader alone (size + sha256 per shard, decode every member):
  the floor any consumer pays;
* **PairDataset** — rank 0 of 1 and of 2 ranks, 0 and 2 loader workers, batch 8, 64-px crops,
  one LR view per sample (float tensors), through ``ds.loader()``: samples/s **per rank**;
* **export** — ``export_folders``: the same reads plus one PNG per HR and LR written by temp +
  rename, ``meta_info.txt`` and the final rename of ``OUT.partial``: pairs/s and MB/s of PNG.

The last column sets each rate beside what the ``tiny`` trainer consumes per rank on this kind of
machine (``--trainer-samples-per-s``, from bench/results/2026-11-30-training-cpu.md: ZeRO-2,
1 rank, 1.97 samples/s); a loader must stay well above it. Nothing is asserted; numbers vary by
machine and load.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, default=128, help="HR patch side (default 128)")
    ap.add_argument("--per-image", type=int, default=8, help="patches per bundled photo (default 8)")
    ap.add_argument("--trainer-samples-per-s", type=float, default=1.97,
                    help="samples/s one rank of the tiny trainer consumes (default: the recorded CPU figure)")
    args = ap.parse_args()

    from pairforge.pipeline import PairDataset, SynthConfig, read_pairs, synth
    from pairforge.pipeline.export import export_folders

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig.from_dict({"dataset": {"patch": {"size": args.patch, "per_image": args.per_image},
                                                 "images_per_shard": 2},
                                     "run": {"executor": "inline", "progress": False, "device": "cpu"}})
        ds = synth("bundled", str(Path(tmp) / "pairs"), cfg).url
        t = time.perf_counter()
        n = sum(1 for _ in read_pairs(ds, strict=True))
        read_s = time.perf_counter() - t
        rows = []
        for world, workers in ((1, 0), (1, 2), (2, 2)):
            ds_ = PairDataset(ds, rank=0, world_size=world, crop=64)
            loader = ds_.loader(batch_size=8, num_workers=workers)
            t = time.perf_counter()
            seen = sum(len(batch["key"]) for batch in loader)
            rows.append((f"PairDataset {world} rank(s) × {workers} workers", seen / (time.perf_counter() - t)))
        t = time.perf_counter()
        res = export_folders(ds, Path(tmp) / "folders")
        export_s = time.perf_counter() - t
        mb = sum(p.stat().st_size for p in res.out.rglob("*.png")) / 1e6
    trainer = args.trainer_samples_per_s
    print(f"{n} pairs, HR {args.patch} px, {mb:.1f} MB of PNG written by export")
    print(f"| path | samples/s (per rank) | MB/s | × trainer ({trainer} samples/s) |")
    print("|---|---|---|---|")
    print(f"| read_pairs (baseline) | {n / read_s:.1f} | – | {n / read_s / trainer:.0f} |")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | – | {rate / trainer:.0f} |")
    print(f"| export | {res.pairs / export_s:.1f} | {mb / export_s:.1f} | {res.pairs / export_s / trainer:.0f} |")


if __name__ == "__main__":
    main()
