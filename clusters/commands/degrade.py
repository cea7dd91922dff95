"""``pairforge degrade``: preview a degradation preset on a few images, as a contact sheet.

Bad arguments (an unknown preset, a source that is not a folder, no usable image, ``--device
cuda`` without CUDA) are found before anything is degraded: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


class UsageError(ValueError):
    """An argument this command cannot work with (exit 2)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pairforge.clusters.commands.presets import names_help

    p = subparsers.add_parser(
        "degrade",
        help="degrade a few images with a preset and write a contact sheet (HR | LR + parameters)",
        description="Degrade images (a folder, or the bundled sample photos) with one preset and write "
        "contact_sheet.png and records.jsonl. For whole datasets use `pairforge synth`.",
    )
    p.add_argument("--source", default="bundled", help="a folder of images, or 'bundled' (default)")
    p.add_argument("--preset", default="realesrgan-x4plus",
                   help=f"degradation preset ({names_help('degradation')}) or YAML file (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the degradations (default %(default)s)")
    p.add_argument("--limit", type=int, default=6, help="at most this many images (default %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="torch device to degrade on: cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--out", default="degrade-out", help="output folder (default %(default)s)")
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
        raise UsageError(f"--source {source!r} is not a folder (or 'bundled')")
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
    try:
        cfg, images = _inputs(args)
    except UsageError as exc:
        print(f"pairforge degrade: error: {exc}", file=sys.stderr)
        return 2
    return _preview(cfg, images, args)


def _inputs(args: argparse.Namespace) -> tuple:
    """The preset and the images, checked before any degradation; raises :class:`UsageError`."""
    import torch

    from pairforge.config import ConfigError
    from pairforge.degradations import load_preset

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device} asked for, but CUDA is not available on this machine; "
                         "use --device cpu")
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit}: expected at least 1")
    try:
        cfg = load_preset(args.preset)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as exc:
        raise UsageError(f"--preset {args.preset!r}: {exc}") from None
    images = _images(args.source, args.limit)
    if not images:
        raise UsageError(f"no usable images (RGB, ≥{MIN_PREVIEW_SIDE} px) in {args.source!r}")
    return cfg, images


def _preview(cfg, images: list[tuple[str, np.ndarray]], args: argparse.Namespace) -> int:
    """Degrade the images' centre crops and write the contact sheet and the records."""
    import torch

    from pairforge.degradations import Degrader
    from pairforge.pipeline.inspect import contact_sheet

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
