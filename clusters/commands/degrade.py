"""``pairforge degrade``: preview a degradation preset on a few images, as a contact sheet.

Bad arguments (an unknown preset, a source that is not a folder, no usable image, ``--device
cuda`` without CUDA) are found before anything is degraded: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pairforge.errors import UsageError


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pairforge.clusters.presets_catalog import names_help

    p = subparsers.add_parser(
        "degrade",
        help="degrade a few images with a preset and write a contact sheet (HR | LR + parameters)",
        description="Degrade a few images from any source `pairforge synth` reads (a folder, a list file, "
        "s3://, shards, or the bundled sample photos) with one preset: centre crops of the preset's HR "
        "size, written as hr/KEY.png and lr/KEY.png beside records.jsonl (replayable) and contact_sheet.png. "
        "For whole datasets use `pairforge synth`.",
    )
    p.add_argument("--source", default="bundled",
                   help="what `pairforge synth --source` takes: a folder, list file, s3:// prefix, shards, "
                        "or 'bundled' (default)")
    p.add_argument("--preset", default="realesrgan-x4plus",
                   help=f"degradation preset ({names_help('degradation')}) or YAML file (default %(default)s)")
    p.add_argument("--patch-size", type=int, default=None,
                   help="HR crop side in px (default: the preset's hr_size, as synth uses)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the degradations (default %(default)s)")
    p.add_argument("--limit", type=int, default=6, help="at most this many images (default %(default)s)")
    p.add_argument("--device", default="cpu",
                   help="torch device to degrade on: cpu, cuda or cuda:N (default %(default)s)")
    p.add_argument("--out", default="degrade-out", help="output folder (default %(default)s)")
    return p


def _images(source: str, limit: int, size: int) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """Up to ``limit`` images of ``source`` (listed and decoded as synth does) whose short side is at
    least ``size``, and the names (with sizes) of the ones left out for being smaller."""
    from pairforge.pipeline import storage
    from pairforge.pipeline.sources import SourceError, list_source
    from pairforge.training.model.pixels import UnreadableImage, decode_bytes

    try:
        listing = list_source(source)
    except SourceError as exc:
        raise UsageError(f"--source {source!r}: {exc}") from None
    usable, too_small = [], []
    for item in listing.items:
        try:
            data = storage.read_bytes(item.url, offset=item.offset, size=item.size)
            img = decode_bytes(data, item.name)  # the one reader: the pixels synth, upscale and eval see
        except (UnreadableImage, OSError):
            continue
        if min(img.shape[:2]) < size:
            too_small.append(f"{item.name} {img.shape[1]}×{img.shape[0]}")
            continue
        usable.append((item.name, img))
        if len(usable) >= limit:
            break
    return usable, too_small


def _centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


def _key(name: str) -> str:
    """A record key (no dots, no separators) from a listing name."""
    return "".join(c if c.isalnum() else "_" for c in Path(name).stem)


def run(args: argparse.Namespace) -> int:
    cfg, size, images = _inputs(args)  # UsageError: one line, exit 2, before any degradation
    return _preview(cfg, size, images, args)


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
    except (ConfigError, KeyError, FileNotFoundError) as exc:  # an unknown name, a config file not there
        raise UsageError(f"--preset {args.preset!r}: {exc}") from None
    size = int(args.patch_size or cfg.hr_size)
    if size < cfg.scale or size % cfg.scale:
        raise UsageError(f"--patch-size {size}: expected a multiple of the preset's scale ×{cfg.scale}")
    images, too_small = _images(args.source, args.limit, size)
    if not images:
        smaller = f" (smaller: {', '.join(too_small[:5])}{' …' if len(too_small) > 5 else ''})" if too_small else ""
        raise UsageError(f"no usable images of at least {size} px in {args.source!r}{smaller}; "
                         "pass a smaller --patch-size")
    if too_small:
        print(f"pairforge degrade: left out {len(too_small)} image(s) smaller than {size} px: "
              f"{', '.join(too_small)}", file=sys.stderr)
    return cfg, size, images


def _preview(cfg, size: int, images: list[tuple[str, np.ndarray]], args: argparse.Namespace) -> int:
    """Degrade the images' centre crops; write the crops, the LRs, the records and the contact sheet.

    The HR crops are saved beside ``records.jsonl`` so any record can be replayed:
    ``replay(hr/KEY.png as a tensor, record) == lr/KEY.png``.
    """
    import torch
    from PIL import Image

    from pairforge.degradations import Degrader
    from pairforge.pipeline.inspect import contact_sheet

    crops = [_centre_crop(img, size) for _, img in images]
    keys = [_key(name) for name, _ in images]
    hr = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
    lr, records = Degrader(cfg, device=args.device)(hr, keys=keys, seed=args.seed)
    out = Path(args.out)
    for sub in ("hr", "lr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    lr_np = lr.permute(0, 2, 3, 1).cpu().numpy()
    for key, crop, low in zip(keys, crops, lr_np):
        Image.fromarray(crop).save(out / "hr" / f"{key}.png")
        Image.fromarray(low).save(out / "lr" / f"{key}.png")
    samples = [{"key": keys[i], "hr": crops[i], "lr": [lr_np[i]],
                "params": {"views": [records[i]], "source": {"name": images[i][0]}}} for i in range(len(keys))]
    sheet_path = out / "contact_sheet.png"
    contact_sheet(samples, str(sheet_path), title=f"preset {cfg.name} · seed {args.seed} · HR {size} px · "
                                                 f"×{cfg.scale} · source {args.source}")
    with open(out / "records.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {sheet_path}, {out / 'records.jsonl'}, hr/ and lr/ ({len(keys)} pairs, HR {size} px)")
    return 0
