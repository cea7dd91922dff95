"""Cut HR training patches out of a decoded image with albumentations.

Each patch gets its own key ``<image key>_<patch index:03d>`` and its own random stream derived
from ``(dataset seed, key)``; the albumentations pipeline is re-seeded per patch, so the crop
box and the flip/rotation depend on nothing else — not on which worker runs it, how many
patches were cut before it, or global RNG state.  The applied parameters (crop box, flip,
rot90, upscale factor) go into the sample's JSON so a patch can be re-cut from its source.

A patch with nothing to learn from never becomes a sample: :func:`degenerate` finds one-colour
patches and patches that are mostly rows (or columns) of one colour — what a decoder leaves where
a damaged stream ended, a padded border, a blown-out area.  :meth:`Patcher.training_patches`
drops those (each counted in the shard's stats as ``flat_patch``) and skips an image none of
whose patches is usable as ``flat_image``.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple, get_args

import numpy as np

from pairforge.config import ConfigError
from pairforge.degradations.rng import crop_seed

from .decode import SkipInput

# albumentations otherwise tries to reach PyPI for a version check on import (offline clusters)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

Policy = Literal["skip", "upscale"]
POLICIES = get_args(Policy)

#: A patch each of whose channels has a standard deviation below this (in 8-bit levels) is one
#: colour up to rounding.  Sensor noise alone exceeds it: the flattest patches of the bundled
#: photos measure 2.8 (rocket.jpg's sky at 64 px), 8.5 at 128 px, 19 at 256 px; only
#: astronaut.png's pure-black background (0,0,0) comes below it, at 64 px.
FLAT_STD = 0.5
#: A patch at least this fraction of whose rows (or columns) are exactly one and the same colour
#: is fill with a sliver of content, like the gray rows a JPEG decoder writes after a damaged
#: stream.  Real photos come close only where they are clipped: astronaut.png's pure-black
#: background reaches 94% in a few 64 px windows (3 of 12,769; 173 of them reach 50%), 23% at
#: 128 px, and no other bundled photo has a single constant row in any patch of 64 px or more.
FLAT_RUN_FRACTION = 0.9


@dataclass(frozen=True)
class PatchConfig:
    """How HR patches are cut.  ``size=None`` means "the degradation preset's ``hr_size``".

    Checked by :meth:`validate`, which its users call with the path that names it in errors
    (``dataset.patch`` in a synth config).  ``to_dict()``, with the size resolved, is part of the
    dataset identity: renaming or adding a field changes every dataset id.
    """

    size: int | None = None
    per_image: int = 4
    min_size_policy: Policy = "skip"  # skip images smaller than a patch, or upscale them
    min_side: int = 32                # absolute floor: smaller images are always skipped
    flips: bool = True                # random horizontal flip + rot90 (the 8 dihedral symmetries)

    def validate(self, path: str = "patch") -> None:
        """Raise :class:`ConfigError` naming ``path.<field>`` for a value no patch can be cut with."""
        if self.size is not None and self.size < 1:
            raise ConfigError(f"{path}.size: expected null or an integer >= 1, got {self.size!r}")
        if self.per_image < 1:
            raise ConfigError(f"{path}.per_image: expected an integer >= 1, got {self.per_image!r}")
        if self.min_size_policy not in POLICIES:
            raise ConfigError(f"{path}.min_size_policy: {self.min_size_policy!r} is not allowed; "
                              f"choose one of {list(POLICIES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def size_problem(self, w: int, h: int, size: int | None = None) -> str | None:
        """Why a ``w``×``h`` image gives no patch (the ``too_small`` detail), or None.

        One rule for the workers (:meth:`Patcher._fit`) and ``synth --dry-run``, which judges
        from the header alone.  ``size`` overrides ``self.size`` as in :class:`Patcher`.
        """
        size = int(size or self.size)
        if min(w, h) < self.min_side:
            return f"{w}x{h} below min_side {self.min_side}"
        if min(w, h) < size and self.min_size_policy == "skip":
            return f"{w}x{h} < patch {size}"
        return None


class Patch(NamedTuple):
    """One HR patch as cut: its sample key, its pixels (HxWx3 uint8) and how it was cut."""

    key: str
    pixels: np.ndarray
    meta: dict


class DroppedPatch(NamedTuple):
    """A patch cut but not kept, and why (listed in the shard's stats)."""

    key: str
    reason: str
    detail: str


def patch_key(image_key: str, j: int) -> str:
    return f"{image_key}_{j:03d}"


def degenerate(pixels: np.ndarray) -> str | None:
    """Why an HxWx3 uint8 patch is no training data, or None when it is.

    One colour (every channel's standard deviation below :data:`FLAT_STD`), or at least
    :data:`FLAT_RUN_FRACTION` of its rows or columns exactly one and the same colour.  Both
    thresholds sit well away from real photo content (measured: see their comments), so a
    patch of sky, fog or a plain wall is kept.
    """
    import cv2

    p = np.ascontiguousarray(pixels)
    h, w, c = p.shape
    std = float(cv2.meanStdDev(p)[1].max())  # ~40x faster than numpy's float64 std on 512 px
    if std < FLAT_STD:
        return f"one colour (std {std:.2f} < {FLAT_STD})"
    flat = p.reshape(h, w * c)
    rows = (flat[:, c:] == flat[:, :-c]).all(axis=1)  # every pixel equals its left neighbour
    cols = (flat[1:] == flat[:-1]).all(axis=0).reshape(w, c).all(axis=1)  # ... its upper neighbour
    for name, constant, colours in (("rows", rows, p[:, 0]), ("columns", cols, p[0])):
        if constant.mean() < FLAT_RUN_FRACTION:
            continue
        values, counts = np.unique(colours[constant], axis=0, return_counts=True)
        share = counts.max() / len(constant)
        if share >= FLAT_RUN_FRACTION:
            colour = tuple(int(v) for v in values[counts.argmax()])
            return f"{share:.0%} of its {name} are the one colour {colour}"
    return None


class Patcher:
    """Thread-safe patch cutter (one albumentations pipeline per thread).

    ``size`` overrides ``cfg.size``; one of them must be given.
    """

    def __init__(self, cfg: PatchConfig, size: int | None = None):
        cfg.validate()
        if (size or cfg.size) is None:
            raise ConfigError("patch.size: the patch size is not resolved (give a size)")
        self.cfg = cfg
        self.size = int(size or cfg.size)
        self._local = threading.local()

    def warm_up(self) -> None:
        self._compose()

    def _compose(self):
        comp = getattr(self._local, "compose", None)
        if comp is None:
            import albumentations as A

            transforms = [A.RandomCrop(self.size, self.size, p=1.0)]
            if self.cfg.flips:
                transforms += [A.HorizontalFlip(p=0.5), A.RandomRotate90(p=1.0)]
            comp = A.Compose(transforms, save_applied_params=True, seed=0)
            self._local.compose = comp
        return comp

    def _fit(self, img: np.ndarray) -> tuple[np.ndarray, float | None]:
        h, w = img.shape[:2]
        short = min(h, w)
        problem = self.cfg.size_problem(w, h, self.size)
        if problem:
            raise SkipInput("too_small", problem)
        if short >= self.size:
            return img, None
        import cv2

        s = self.size / short
        nw, nh = max(self.size, math.ceil(w * s)), max(self.size, math.ceil(h * s))
        return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_CUBIC), s

    def patches(self, img: np.ndarray, image_key: str, seed: int) -> list[Patch]:
        """The image's ``cfg.per_image`` patches, each with its own key and random stream."""
        img, upscale = self._fit(img)
        comp = self._compose()
        out = []
        for j in range(self.cfg.per_image):
            key = patch_key(image_key, j)
            comp.set_random_seed(crop_seed(seed, key, "patch"))
            res = comp(image=img)
            meta: dict = {"index": j, "image_size": [int(img.shape[1]), int(img.shape[0])],
                          "upscale": upscale, "hflip": False, "rot90": 0}
            for name, params in res.get("applied_transforms", []):
                if name == "RandomCrop":
                    meta["crop_box"] = [int(v) for v in params["crop_coords"]]  # x0, y0, x1, y1
                elif name == "HorizontalFlip":
                    meta["hflip"] = True
                elif name == "RandomRotate90":
                    meta["rot90"] = int(params.get("factor", 0))
            out.append(Patch(key, np.ascontiguousarray(res["image"]), meta))
        return out

    def training_patches(self, img: np.ndarray, image_key: str, seed: int) -> tuple[list[Patch], list[DroppedPatch]]:
        """:meth:`patches` without the degenerate ones, and those dropped (``flat_patch``).

        Raises :class:`SkipInput` ``flat_image`` when no patch is left (a constant image, or a
        decoder's fill everywhere the crops fell).
        """
        kept: list[Patch] = []
        dropped: list[DroppedPatch] = []
        for patch in self.patches(img, image_key, seed):
            why = degenerate(patch.pixels)
            if why is None:
                kept.append(patch)
            else:
                dropped.append(DroppedPatch(patch.key, "flat_patch", f"patch {patch.key}: {why}"))
        if not kept:
            raise SkipInput("flat_image", f"all {len(dropped)} patches are flat; {dropped[0].detail}"[:160])
        return kept, dropped
