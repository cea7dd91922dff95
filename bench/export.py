"""What ``pairforge export`` costs beside only reading the same pairs.

    python bench/export.py [--patch 128] [--per-image 8]

Synthesizes a dataset from the bundled photos (inline executor, CPU) into a temporary folder,
then times, on the same shards:

* **read_pairs** — the verified reader alone (size + sha256 per shard, decode every member):
  the floor any consumer pays;
* **export** — ``export_folders``: the same reads plus one PNG per HR and LR written by temp +
  rename, ``meta_info.txt`` and the final rename of ``OUT.partial``.

Reported as pairs/s and MB/s of PNG written (the folders' size over the time).  Nothing is
asserted; numbers vary by machine and load.
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
    args = ap.parse_args()

    from pairforge.pipeline import SynthConfig, read_pairs, synth
    from pairforge.pipeline.export import export_folders

    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig.from_dict({"dataset": {"patch": {"size": args.patch, "per_image": args.per_image},
                                                 "images_per_shard": 2},
                                     "run": {"executor": "inline", "progress": False, "device": "cpu"}})
        ds = synth("bundled", str(Path(tmp) / "pairs"), cfg).url
        t = time.perf_counter()
        n = sum(1 for _ in read_pairs(ds, strict=True))
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        res = export_folders(ds, Path(tmp) / "folders")
        export_s = time.perf_counter() - t
        mb = sum(p.stat().st_size for p in res.out.rglob("*.png")) / 1e6
    print(f"{n} pairs, HR {args.patch} px, {mb:.1f} MB of PNG written")
    print(f"{'path':<12} {'seconds':>8} {'pairs/s':>9} {'MB/s':>7}")
    print(f"{'read_pairs':<12} {read_s:8.2f} {n / read_s:9.1f} {'–':>7}")
    print(f"{'export':<12} {export_s:8.2f} {res.pairs / export_s:9.1f} {mb / export_s:7.1f}")


if __name__ == "__main__":
    main()
