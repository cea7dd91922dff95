"""``pairforge degrade``: preview a degradation preset on a few images, as a contact sheet."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "degrade",
        help="degrade a few images with a preset and write a contact sheet (HR | LR + parameters)",
        description="Degrade images (a folder, or the bundled sample photos) with one preset and write "
        "contact_sheet.png and records.jsonl. For whole datasets use `pairforge synth`.",
    )
    p.add_argument("--source", default="bundled", help="a folder of images, or 'bundled' (default)")
    p.add_argument("--preset", default="realesrgan-x4plus", help="preset name or YAML file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=6, help="at most this many images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="degrade-out", help="output folder")
    return p


#: smaller images are left out of the preview (their crop would be too small to show the chain)
MIN_PREVIEW_SIDE = 128


def _candidates(source: str) -> list[tuple[str, str]]:
    """``(name, path)`` of the images to preview: the pipeline's bundled photos, or a folder's images."""
    from pairforge.pipeline.sources import IMAGE_EXTS, bundled_photos

    if source == "bundled":
        return bundled_photos()
    folder = Path(source)
    if not folder.is_dir():
        raise SystemExit(f"pairforge degrade: --source {source!r} is not a folder (or 'bundled')")
    return [(p.name, str(p)) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS]


def _images(source: str, limit: int) -> list[tuple[str, np.ndarray]]:
    """Up to ``limit`` readable images of at least :data:`MIN_PREVIEW_SIDE` px, as RGB arrays."""
    from PIL import Image

    out = []
    for name, path in _candidates(source):
        try:
            with Image.open(path) as im:
                if im.mode not in ("RGB", "RGBA", "L", "P") or min(im.size) < MIN_PREVIEW_SIDE:
                    continue
                out.append((Path(name).stem, np.asarray(im.convert("RGB"))))
        except OSError:
            continue
        if len(out) >= limit:
            break
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from pairforge.degradations import Degrader, load_preset
    from pairforge.pipeline.inspect import contact_sheet

    cfg = load_preset(args.preset)
    images = _images(args.source, args.limit)
    if not images:
        raise SystemExit(f"pairforge degrade: no usable images (RGB, ≥{MIN_PREVIEW_SIDE} px) in {args.source!r}")
    size = min(cfg.hr_size, *(min(img.shape[:2]) for _, img in images))
    size -= size % cfg.scale
    crops = [img[(img.shape[0] - size) // 2 :][:size, (img.shape[1] - size) // 2 :][:, :size] for _, img in images]
    keys = ["".join(c if c.isalnum() else "_" for c in name) for name, _ in images]
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    lr, records = Degrader(cfg, device=args.device)(hr, keys=keys, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    lr_np = lr.permute(0, 2, 3, 1).cpu().numpy()
    samples = [
        {"key": keys[i], "hr": crops[i], "lr": [lr_np[i]], "params": {"views": [records[i]], "source": {"name": images[i][0]}}}
        for i in range(len(keys))
    ]
    sheet_path = Path(args.out) / "contact_sheet.png"
    contact_sheet(samples, str(sheet_path))
    with open(Path(args.out) / "records.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {sheet_path} and {Path(args.out) / 'records.jsonl'} ({len(keys)} pairs)")
    return 0
