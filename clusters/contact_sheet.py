"""Contact sheets: rows of HR | LR (nearest-upscaled to HR size) with a caption under each pair."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's data (it has σ, ×, π, →); Pillow's default lacks them."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def contact_sheet(
    rows: Sequence[tuple[np.ndarray, Sequence[np.ndarray], str]],
    tile: int = 256,
    caption_lines: int = 4,
    title: str | None = None,
) -> Image.Image:
    """Render ``(hr, [lr views], caption)`` rows; images are HWC uint8 arrays.

    LR views are upscaled with nearest neighbour so their pixels stay visible as pixels.
    """
    font = _font(13)
    line_h = 16
    n_views = max(len(r[1]) for r in rows)
    cap_h = caption_lines * line_h + 8
    title_h = 28 if title else 0
    width = tile * (1 + n_views) + 8 * (n_views + 2)
    height = title_h + len(rows) * (tile + cap_h + 8) + 8
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((8, 6), title, fill=(0, 0, 0), font=_font(14 if len(title) * 8 < width else 11))
    y = title_h + 8
    for hr, lrs, caption in rows:
        x = 8
        for i, img in enumerate([hr, *lrs]):
            im = Image.fromarray(img)
            resample = Image.Resampling.BICUBIC if i == 0 else Image.Resampling.NEAREST
            im = im.resize((tile, round(tile * im.height / im.width)), resample)
            sheet.paste(im.crop((0, 0, tile, min(tile, im.height))), (x, y))
            label = "HR" if i == 0 else (f"LR view {i - 1}" if len(lrs) > 1 else f"LR ({img.shape[1]}×{img.shape[0]})")
            draw.rectangle((x, y, x + 8 * len(label) + 6, y + 16), fill=(0, 0, 0))
            draw.text((x + 3, y + 1), label, fill=(255, 255, 255), font=font)
            x += tile + 8
        for j, line in enumerate(caption.splitlines()[:caption_lines]):
            draw.text((8, y + tile + 4 + j * line_h), line, fill=(20, 20, 20), font=font)
        y += tile + cap_h + 8
    return sheet
