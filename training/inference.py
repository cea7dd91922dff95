"""Tiled upscaling of an image with an exported (or in-memory) one-step generator.

The LR image is upsampled bicubically to the output size (the generator's input), cut into
overlapping tiles, each tile is restored with one generator call, and the tiles are blended
with a raised-cosine (Hann) window so seams do not show. Tiles are padded by reflection at the
borders so every tile has the full size (the VAE needs sides divisible by its down factor).

    python -m pairforge.training.inference EXPORT_DIR input.png output.png --scale 4 --tile 512 --overlap 64
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _window(size: int, overlap: int) -> torch.Tensor:
    w = torch.ones(size)
    if overlap > 0:
        ramp = 0.5 - 0.5 * torch.cos(torch.linspace(0, torch.pi, overlap + 2)[1:-1])
        w[:overlap], w[-overlap:] = ramp, ramp.flip(0)
    return w


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    s = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(s))


@torch.no_grad()
def upscale_tensor(generator, lr: torch.Tensor, scale: int, tile: int = 512, overlap: int = 64,
                   batch: int = 1) -> torch.Tensor:
    """lr: (1,3,h,w) in [0,1] → (1,3,h·scale,w·scale) in [0,1]."""
    dev = next(generator.parameters()).device
    dtype = next(generator.parameters()).dtype
    x = F.interpolate(lr.to(dev).float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
    _, _, H, W = x.shape
    th, tw = min(tile, H), min(tile, W)
    mult = 8
    th, tw = max(mult, th // mult * mult), max(mult, tw // mult * mult)
    ph, pw = max(0, th - H), max(0, tw - W)
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < H and pw < W) else "replicate")
    Hp, Wp = x.shape[-2:]
    ov_h, ov_w = min(overlap, th // 2), min(overlap, tw // 2)
    out = torch.zeros(1, 3, Hp, Wp, device=dev)
    wsum = torch.zeros(1, 1, Hp, Wp, device=dev)
    win = (_window(th, ov_h)[:, None] * _window(tw, ov_w)[None, :]).to(dev)
    boxes = [(y, x0) for y in _starts(Hp, th, th - ov_h) for x0 in _starts(Wp, tw, tw - ov_w)]
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        tiles = torch.cat([x[:, :, y:y + th, x0:x0 + tw] for y, x0 in chunk])
        sr = generator(tiles.to(dtype))["sr"].float()
        for (y, x0), s in zip(chunk, sr):
            out[:, :, y:y + th, x0:x0 + tw] += s * win
            wsum[:, :, y:y + th, x0:x0 + tw] += win
    return (out / wsum.clamp_min(1e-8))[:, :, :H, :W].clamp(0, 1).cpu()


def load_generator(export_dir: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32):
    from pairforge.training.models.generator import OneStepGenerator

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return OneStepGenerator.from_export(export_dir, torch_dtype=dtype).to(device)


def upscale_file(export_dir: str | Path, src: str | Path, dst: str | Path, scale: int = 4, tile: int = 512,
                 overlap: int = 64, device: str | None = None) -> Path:
    from PIL import Image

    gen = load_generator(export_dir, device)
    img = np.asarray(Image.open(src).convert("RGB"))
    lr = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    sr = upscale_tensor(gen, lr, scale, tile, overlap)
    arr = (sr[0].permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(dst)
    return Path(dst)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="tiled upscaling with an exported pairforge generator")
    p.add_argument("export_dir")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--tile", type=int, default=512, help="output-resolution tile side")
    p.add_argument("--overlap", type=int, default=64)
    p.add_argument("--device")
    a = p.parse_args(argv)
    print(upscale_file(a.export_dir, a.input, a.output, a.scale, a.tile, a.overlap, a.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
