"""Corrupt, truncated and degenerate inputs never become training data (issue 19, items 1 and 7).

libjpeg only warns about a damaged JPEG stream and fills the rest with gray; Pillow hides the
warning.  These files are made the way the issue found them (scikit-image photos, every 7th byte
of a range XOR 0xFF) and go through the real ``pairforge synth``: each must be skipped with a
reason, and no stored HR patch may be degenerate.  The pixel limit is the documented 100 MP,
decided from the header (95 MP header-only files pass it, 101 MP ones do not).
"""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from pairforge.pipeline.decode import DEFAULT_MAX_PIXELS, SkipInput, decode_image, image_size
from pairforge.pipeline.patching import PatchConfig, Patcher, degenerate
from pairforge.pipeline.sources import bundled_photos

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
PER_IMAGE = 4
SMALL = ["--executor", "inline", "--patch-size", "64", "--patches-per-image", str(PER_IMAGE), "--no-progress",
         "--device", "cpu", "--seed", "0"]


# ------------------------------------------------------------------------------------------- files
def _save(arr: np.ndarray, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, fmt, **kw)
    return b.getvalue()


def _xor_every_7th(blob: bytes, start: int, stop: int) -> bytes:
    out = bytearray(blob)
    for i in range(start, min(stop, len(out)), 7):
        out[i] ^= 0xFF
    return bytes(out)


def corrupt_astronaut() -> bytes:
    """The issue's reproduction: libjpeg warns, djpeg exits 2, Pillow decodes it without a word."""
    return _xor_every_7th(_save(data.astronaut(), "JPEG", quality=75), 3000, 3400)


def corrupt_rocket() -> bytes:
    """rocket.jpg re-encoded (56,975 bytes): the old decoder returned rows 33.. as one gray value."""
    blob = _save(data.rocket(), "JPEG", quality=92)
    return _xor_every_7th(blob, 2000, 6000)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` RGB pixels, with no image data (a few dozen bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def half_filled() -> np.ndarray:
    """96x384: a photo strip on top, then 256 rows of the gray a JPEG decoder fills with."""
    img = np.full((384, 96, 3), 128, np.uint8)
    img[:128] = data.coffee()[100:228, 200:296]
    return img


@pytest.fixture(scope="module")
def corrupt_dir(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A source folder: one good photo, one partly filled, and every kind of bad input (name -> outcome)."""
    d = tmp_path_factory.mktemp("corrupt")
    good_png = _save(np.ascontiguousarray(data.chelsea()[:160, :200]), "PNG")
    files = {
        "good.png": (good_png, "ok"),
        "filled.png": (_save(half_filled(), "PNG"), "ok"),  # decodes fine; its gray patches are dropped
        "astronaut_corrupt.jpg": (corrupt_astronaut(), "corrupt"),
        "rocket_corrupt.jpg": (corrupt_rocket(), "corrupt"),
        "truncated.png": (good_png[:-12], "corrupt"),  # lost its IEND chunk: a download cut short
        "constant.png": (_save(np.full((160, 200, 3), (90, 120, 200), np.uint8), "PNG"), "flat_image"),
        "header_95mp.png": (header_only_png(10_000, 9_500), "corrupt"),  # within 100 MP: reaches the data check
        "header_101mp.png": (header_only_png(10_100, 10_000), "too_large"),
    }
    for name, (blob, _) in files.items():
        (d / name).write_bytes(blob)
    return d, {name: outcome for name, (_, outcome) in files.items()}


# ------------------------------------------------------------------------------------------- decode
def test_corrupt_jpegs_are_skipped_as_corrupt():
    for blob in (corrupt_astronaut(), corrupt_rocket()):
        with pytest.raises(SkipInput) as e:
            decode_image(blob)
        assert e.value.reason == "corrupt" and e.value.detail.startswith("JPEG: Corrupt JPEG data"), e.value


def test_damaged_pngs_and_webps_are_skipped_as_corrupt():
    png = _save(data.coffee(), "PNG")
    idat = png.index(b"IDAT")
    flipped = bytearray(png)
    flipped[idat + 4 + 10_000] ^= 0x01  # one bit of image data; the chunk's CRC no longer matches
    webp = _save(data.coffee(), "WEBP", quality=80)
    cases = {"no IEND": png[:-12], "cut inside IDAT": png[: len(png) // 2], "CRC": bytes(flipped),
             "webp cut": webp[: len(webp) - 100]}
    for what, blob in cases.items():
        with pytest.raises(SkipInput) as e:
            decode_image(blob)
        assert e.value.reason == "corrupt", (what, e.value)
    assert "CRC mismatch in the IDAT chunk" in _reason(bytes(flipped)).detail
    assert "no IEND" in _reason(png[:-12]).detail


def _reason(blob: bytes) -> SkipInput:
    with pytest.raises(SkipInput) as e:
        decode_image(blob)
    return e.value


def test_clean_jpegs_decode_to_pillows_pixels():
    """The strict decoder is libjpeg-turbo with Pillow's settings: the same pixels, every variant."""
    photo = np.ascontiguousarray(data.astronaut()[:200, :240])
    exif = Image.Exif()
    exif[0x0112] = 6
    variants = {
        "baseline": _save(photo, "JPEG", quality=90),
        "progressive": _save(photo, "JPEG", quality=85, progressive=True),
        "444": _save(photo, "JPEG", quality=95, subsampling=0),
        "gray": _save(photo[..., 1], "JPEG", quality=90),
        "exif_rotated": _save(photo, "JPEG", quality=90, exif=exif.tobytes()),
        "cmyk": _save_pil(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=90),
        "bundled_rocket": Path(dict(bundled_photos())["rocket.jpg"]).read_bytes(),
    }
    for name, blob in variants.items():
        arr, info = decode_image(blob)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(blob))).convert("RGB"))
        assert arr.shape == ref.shape and np.array_equal(arr, ref), name
    assert "exif_orientation_6" in decode_image(variants["exif_rotated"])[1]["conversions"]


def _save_pil(img: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# ------------------------------------------------------------------------------------------- pixel limit
def test_pixel_limit_is_the_documented_one_decided_from_the_header():
    """Pillow's own bomb warning starts at 89.5 MP; ours is 100 MP, from the header alone."""
    assert DEFAULT_MAX_PIXELS == 100_000_000
    pillow_limit = Image.MAX_IMAGE_PIXELS
    assert image_size(header_only_png(10_000, 9_500)) == (10_000, 9_500)  # 95 MP: not a bomb
    with pytest.raises(SkipInput) as e:
        decode_image(header_only_png(10_000, 9_500))
    assert e.value.reason == "corrupt" and "IDAT" in e.value.detail  # judged on its (missing) data, not refused
    for w, h in ((10_100, 10_000), (13_000, 12_000), (40_000, 40_000)):  # 101 MP, past Pillow's error, 1600 MP
        with pytest.raises(SkipInput) as e:
            image_size(header_only_png(w, h))
        assert e.value.reason == "too_large", (w, h, e.value)
    with pytest.raises(SkipInput) as e:
        decode_image(header_only_png(1_000, 1_000), max_pixels=999_999)
    assert e.value.reason == "too_large"
    assert Image.MAX_IMAGE_PIXELS == pillow_limit  # no process-wide setting left changed


def test_pixel_limit_holds_for_decodes_in_threads():
    """The worker decodes on threads: each header is judged by its own limit, whatever runs beside it."""
    from concurrent.futures import ThreadPoolExecutor

    files = [(header_only_png(10_000, 9_500), DEFAULT_MAX_PIXELS, "corrupt"),
             (header_only_png(10_100, 10_000), DEFAULT_MAX_PIXELS, "too_large"),
             (header_only_png(3_000, 2_000), 5_000_000, "too_large")] * 40

    def outcome(case):
        try:
            decode_image(case[0], case[1])
        except SkipInput as e:
            return e.reason
        return "ok"

    pillow_limit = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(outcome, files)) == [want for _, _, want in files]
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


# ------------------------------------------------------------------------------------------- patches
def test_degenerate_patches_are_found_and_photo_patches_are_not():
    rng = np.random.default_rng(0)
    flat = np.full((64, 64, 3), 128, np.uint8)
    dither = flat.copy()
    dither[rng.random((64, 64)) < 0.05] += 1  # one level on 5% of pixels: std 0.2
    filled = flat.copy()
    filled[:4] = rng.integers(0, 255, (4, 64, 3))  # 94% of the rows one colour
    sky = np.clip(np.linspace(150, 160, 64)[:, None, None] + rng.normal(0, 1.0, (64, 64, 3)), 0, 255).astype(np.uint8)
    assert degenerate(flat) and degenerate(dither) and degenerate(filled)
    assert degenerate(np.ascontiguousarray(filled.transpose(1, 0, 2)))  # columns too
    assert degenerate(sky) is None  # a smooth sky with one level of noise is content


@pytest.mark.parametrize("size", [128, 256])
def test_every_bundled_photo_yields_every_patch(size):
    """The flatness check rejects no patch of a real photo at the preset sizes (256/512) or 128."""
    for name, path in bundled_photos():
        img, _ = decode_image(Path(path).read_bytes())
        if min(img.shape[:2]) < size:
            continue
        patcher = Patcher(PatchConfig(size=size, per_image=16), size)
        for seed in (0, 1):
            kept, dropped = patcher.training_patches(img, "00000000", seed)
            assert len(kept) == 16 and not dropped, (name, size, seed, dropped[:1])


def test_a_constant_image_is_skipped_as_flat():
    patcher = Patcher(PatchConfig(size=64, per_image=2), 64)
    with pytest.raises(SkipInput) as e:
        patcher.training_patches(np.full((100, 120, 3), 7, np.uint8), "00000000", 0)
    assert e.value.reason == "flat_image"


# ------------------------------------------------------------------------------------------- the CLI
def test_synth_skips_corrupt_and_flat_inputs_and_stores_none_of_them(corrupt_dir, tmp_path):
    src, expected = corrupt_dir
    out = tmp_path / "out"
    res = subprocess.run([*PAIRFORGE, "synth", "--source", str(src), "--out", str(out), *SMALL, "--json"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    done = json.loads(res.stdout.strip().splitlines()[-1])
    url = done["url"]

    skipped: dict[str, list[dict]] = {}
    for stats in Path(url).glob("*.stats.json"):
        for entry in json.loads(stats.read_text())["skipped"]:
            skipped.setdefault(entry["name"], []).append(entry)
    for name, outcome in expected.items():
        if outcome != "ok":
            (entry,) = skipped[name]
            assert entry["reason"] == outcome and "patch" not in entry, (name, entry)
    assert "Corrupt JPEG data" in skipped["rocket_corrupt.jpg"][0]["detail"]

    filled_dropped = skipped.get("filled.png", [])
    assert filled_dropped and all(e["reason"] == "flat_patch" and e["patch"] for e in filled_dropped)
    want = {}
    for outcome in expected.values():
        if outcome != "ok":
            want[outcome] = want.get(outcome, 0) + 1
    skipped_inputs = sum(want.values())
    want["flat_patch"] = len(filled_dropped)
    assert done["skipped_by_reason"] == dict(sorted(want.items()))
    totals = json.loads((Path(url) / "manifest.json").read_text())["totals"]
    assert done["skipped_inputs"] == totals["skipped_inputs"] == skipped_inputs  # dropped patches counted apart
    assert totals["skipped_patches"] == len(filled_dropped)

    from pairforge.pipeline import read_pairs

    pairs = list(read_pairs(url))
    by_source: dict[str, int] = {}
    for p in pairs:
        by_source[p["params"]["source"]["name"]] = by_source.get(p["params"]["source"]["name"], 0) + 1
        assert degenerate(p["hr"]) is None, p["key"]
    assert set(by_source) == {"good.png", "filled.png"}  # nothing of a corrupt or flat input is stored
    assert by_source["good.png"] == PER_IMAGE
    assert 1 <= by_source["filled.png"] == PER_IMAGE - len(filled_dropped)
    assert {p["key"] for p in pairs}.isdisjoint(e["patch"] for e in filled_dropped)
    assert done["pairs"] == len(pairs)


def test_dry_run_judges_the_pixel_limit_as_the_workers_do(tmp_path):
    """``synth --dry-run`` reads headers through the decoder's own check: a 95 MP image is
    within the documented limit (it was refused by Pillow's 89.5 MP bomb limit before), 101 MP
    is ``too_large``, and an image smaller than the patch is ``too_small``, as in a real run."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "header_95mp.png").write_bytes(header_only_png(10_000, 9_500))
    (src / "header_101mp.png").write_bytes(header_only_png(10_100, 10_000))
    (src / "tiny.png").write_bytes(_save(np.zeros((40, 40, 3), np.uint8), "PNG"))
    res = subprocess.run([*PAIRFORGE, "synth", "--source", str(src), "--out", str(tmp_path / "out"), *SMALL,
                          "--dry-run", "--json"], capture_output=True, text=True, timeout=300)
    plan = json.loads(res.stdout.strip().splitlines()[-1])
    reasons = {s["name"]: s["reason"] for s in plan["skipped_inputs"]}
    assert reasons == {"header_101mp.png": "too_large", "tiny.png": "too_small"}, plan["skipped_inputs"]
    assert plan["usable_inputs"] == 1 and not (tmp_path / "out").exists()


def test_the_summary_shows_dropped_patches_when_no_input_was_skipped():
    from pairforge.clusters.commands.synth import skipped_summary

    t = {"skipped_inputs": 0, "skipped_patches": 3, "skipped_by_reason": {"flat_patch": 3}}
    assert skipped_summary(t) == "0 skipped, 3 patches dropped: {'flat_patch': 3}"
    assert skipped_summary({"skipped_inputs": 0, "skipped_by_reason": {}}) == "0 skipped"
