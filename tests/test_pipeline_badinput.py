"""Bad inputs, generated as real files: converted where sensible, else skipped with a reason."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data

from pairforge.pipeline import SynthConfig, synth
from pairforge.pipeline.decode import SkipInput, decode_image


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = 30000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels (~110 KB on disk, 900 MP decoded)."""
    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    """name -> expected outcome: "ok" (maybe converted) or the skip reason."""
    import cv2

    d = tmp_path_factory.mktemp("bad")
    photo = data.coffee()[:160, :200]              # 200 x 160 RGB
    rgb = Image.fromarray(photo)
    good_jpg = _save(rgb, "JPEG", quality=90)
    files: dict[str, tuple[bytes, str]] = {
        "ok.jpg": (good_jpg, "ok"),
        "truncated.jpg": (good_jpg[: len(good_jpg) * 6 // 10], "corrupt"),
        "garbage.png": (b"\x89PNG\r\n\x1a\n" + os.urandom(3000), "not_an_image"),
        "notimage.jpg": (b"<html><body>404 not found</body></html>\n" * 20, "not_an_image"),
        "empty.png": (b"", "empty_file"),
        "gray16.png": (_save(Image.fromarray((np.arange(160 * 200, dtype=np.uint32).reshape(160, 200) * 2)
                                             .astype(np.uint16)), "PNG"), "ok"),
        "rgb16.png": (cv2.imencode(".png", (photo[..., ::-1].astype(np.uint16) * 257))[1].tobytes(), "ok"),
        "palette.png": (_save(rgb.quantize(64), "PNG"), "ok"),
        "palette_alpha.png": (_save(rgb.quantize(64), "PNG", transparency=0), "ok"),
        "cmyk.jpg": (_save(rgb.convert("CMYK"), "JPEG", quality=90), "ok"),
        "gray.png": (_save(rgb.convert("L"), "PNG"), "ok"),
        "gray_alpha.png": (_save(rgb.convert("LA"), "PNG"), "ok"),
        "alpha.png": (_save(Image.fromarray(np.dstack([photo, np.tile(np.linspace(0, 255, 200, dtype=np.uint8),
                                                                      (160, 1))])), "PNG"), "ok"),
        "animated.gif": (_save(rgb.quantize(64), "GIF", save_all=True,
                               append_images=[rgb.rotate(90).quantize(64)]), "ok"),
        "tiny.png": (_save(rgb.resize((8, 8)), "PNG"), "too_small"),
        "small.png": (_save(rgb.resize((50, 40)), "PNG"), "too_small"),
        "bomb.png": (bomb_png(), "too_large"),
    }
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    files["exif_rotated.jpg"] = (_save(rgb, "JPEG", quality=95, exif=exif.tobytes()), "ok")
    for name, (blob, _) in files.items():
        (d / name).write_bytes(blob)
    (d / "README.md").write_text("not listed: wrong extension")
    return d, {n: e for n, (_, e) in files.items()}


def test_decode_table(bad_dir):
    d, expected = bad_dir
    for name, outcome in sorted(expected.items()):
        blob = (d / name).read_bytes()
        if outcome in ("ok", "too_small"):  # too_small is the patcher's decision, decode succeeds
            arr, info = decode_image(blob)
            assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3, name
        else:
            with pytest.raises(SkipInput) as e:
                decode_image(blob)
            assert e.value.reason == outcome, (name, e.value)


def test_conversions_are_faithful(bad_dir):
    d, _ = bad_dir
    photo = data.coffee()[:160, :200]
    arr, info = decode_image((d / "exif_rotated.jpg").read_bytes())
    assert arr.shape == (200, 160, 3) and any("exif" in c for c in info["conversions"])
    upright = np.rot90(photo, k=-1)  # orientation 6 = rotate 90° clockwise
    assert np.abs(arr.astype(int) - upright).mean() < 8
    g16, info = decode_image((d / "gray16.png").read_bytes())
    assert "I;16_to_8bit" in info["conversions"] and g16[..., 0].max() > 200  # scaled, not clipped
    assert np.array_equal(g16[..., 0], g16[..., 2])
    alpha, _ = decode_image((d / "alpha.png").read_bytes())
    assert (alpha[:, 0] >= 250).all()  # fully transparent column composited over white
    np.testing.assert_array_equal(alpha[:, -1], photo[:, -1])  # opaque column unchanged
    cmyk, _ = decode_image((d / "cmyk.jpg").read_bytes())
    assert np.abs(cmyk.astype(int) - photo).mean() < 20
    rgb16, _ = decode_image((d / "rgb16.png").read_bytes())
    assert np.abs(rgb16.astype(int) - photo).max() <= 1


@pytest.mark.parametrize("policy", ["skip", "upscale"])
def test_synth_survives_bad_inputs(bad_dir, tmp_path, policy):
    d, expected = bad_dir
    cfg = SynthConfig.from_dict({"dataset": {"images_per_shard": 5,
                                             "patch": {"size": 64, "per_image": 1, "min_size_policy": policy}},
                                 "run": {"executor": "inline", "progress": False}})
    res = synth(str(d), str(tmp_path), cfg)
    assert res.ok
    man = res.manifest
    want = {}
    for name, outcome in expected.items():
        if outcome == "too_small" and policy == "upscale" and name == "small.png":
            outcome = "ok"
        if outcome != "ok":
            want[outcome] = want.get(outcome, 0) + 1
    assert man["totals"]["skipped_by_reason"] == want
    assert man["source"]["ignored_files"] == 1  # README.md
    n_ok = len(expected) - sum(want.values())
    assert man["totals"]["samples"] == n_ok
    skipped = {}
    for s in man["shards"]:
        st = json.load(open(os.path.join(res.url, s["name"].replace(".tar", ".stats.json"))))
        skipped.update({x["name"]: x["reason"] for x in st["skipped"]})
    assert skipped.get("bomb.png") == "too_large" and skipped.get("empty.png") == "empty_file"
    assert ("small.png" in skipped) == (policy == "skip")
    if policy == "upscale":
        from pairforge.pipeline import read_pairs

        ups = [p for p in read_pairs(res.url) if p["params"]["source"]["name"] == "small.png"]
        assert ups and ups[0]["params"]["patch"]["upscale"] == pytest.approx(64 / 40)
