"""What checking for corrupt data costs: decode time per image, Pillow alone vs ``decode_image``.

    python bench/decode.py [--repeats 15] [--patch 256]

On each bundled photo (as shipped, and re-encoded as JPEG quality 90, the common case of a
web-scraped set) it times:

* **pillow** — ``Image.open`` + ``load`` + RGB conversion: what the decoder did before it checked
  anything (it accepted corrupt JPEGs and PNGs without a word);
* **decode_image** — the decoder as it is: JPEGs through libjpeg-turbo with every warning an
  error (simplejpeg, strict), PNG chunk CRCs and IEND checked, then the same conversions;
* **flat check** — :func:`pipeline.patching.degenerate` on one HR patch of ``--patch`` pixels.

Milliseconds, best of ``--repeats`` (the machine may be shared; the best run is the least
disturbed).  Nothing here is asserted; numbers vary by machine.
"""
from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pairforge.pipeline.decode import decode_image
from pairforge.pipeline.patching import degenerate
from pairforge.pipeline.sources import bundled_photos


def best_ms(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def pillow_only(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--patch", type=int, default=256)
    args = ap.parse_args()

    rows = []
    for name, path in bundled_photos():
        blob = Path(path).read_bytes()
        arr = pillow_only(blob)
        jpeg = io.BytesIO()
        Image.fromarray(arr).save(jpeg, "JPEG", quality=90)
        for label, data in ((name, blob), (f"{Path(name).stem}@q90.jpg", jpeg.getvalue())):
            h, w = arr.shape[:2]
            patch = np.ascontiguousarray(arr[:min(h, args.patch), :min(w, args.patch)])
            rows.append((label, f"{w}x{h}", best_ms(lambda data=data: pillow_only(data), args.repeats),
                         best_ms(lambda data=data: decode_image(data), args.repeats),
                         best_ms(lambda patch=patch: degenerate(patch), args.repeats)))
    print(f"{'image':<28}{'size':>10}{'pillow ms':>11}{'decode_image ms':>17}{'ratio':>7}{'flat check ms':>15}")
    for label, size, old, new, flat in rows:
        print(f"{label:<28}{size:>10}{old:>11.2f}{new:>17.2f}{new / old:>7.2f}{flat:>15.3f}")
    print(f"{'total':<38}{sum(r[2] for r in rows):>11.2f}{sum(r[3] for r in rows):>17.2f}"
          f"{sum(r[3] for r in rows) / sum(r[2] for r in rows):>7.2f}")


if __name__ == "__main__":
    main()
