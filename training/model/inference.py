"""Upscaling images of any size with an exported (or in-memory) one-step generator.

The generator is three stages — VAE encode, one UNet call at T_L, VAE decode — and each stage
runs on overlapping tiles whose results are blended with a smooth weight (MultiDiffusion /
OSEDiff's tiled latent, here with raised-cosine ramps):

1. the LR image is upsampled bicubically to ``scale ×`` its size (the generator's input) and
   padded by reflection to a multiple of what the VAE and the UNet need (cropped back at the end,
   so the output is exactly ``scale ×`` the input);
2. **encode** in pixel tiles of ``vae_tile`` (one call when the image is smaller), latents blended;
3. **UNet** in latent tiles of ``tile / f`` (``f`` = the VAE's down factor), the predicted
   clean latents ẑ_H blended — this is the tiling the ``--tile`` flag sets;
4. **decode** in latent tiles of ``vae_tile / f``, pixels blended;
5. an optional colour fix against the bicubic input (:mod:`pairforge.training.model.colorfix`).

Why this has no seams. (a) Blending: each tile's weight is 1 in its interior and falls to 0
towards every edge it shares with a neighbour (a raised-cosine ramp, after a short band of exact
zeros that drops the samples computed next to the tile's zero padding); at the image border it
stays 1. The result is a continuous, per-position convex combination of tile results: a tile's
edge contributes nothing, and where tiles disagree the output moves from one to the other across
the overlap instead of jumping at a line. The blend is linear and ẑ_H is affine in ε̂, so
blending ẑ_H is blending ε̂. (b) Shared normalisation: tiles disagree mostly because each
GroupNorm would normalise a tile with that tile's own statistics (its own contrast and
brightness, seen as a patchwork even when the borders are blended). :class:`SharedGroupNorm`
pools every norm's statistics over all tiles in one extra pass and normalises every tile with
them, as Tiled VAE (MultiDiffusion-upscaler) does for the VAE; here for the UNet too. What still
differs between tiles is context beyond the tile (receptive fields, self-attention within a
tile), which the overlap hides. ``tests/test_upscale.py`` measures both the seams and the
distance to the untiled output. An image that fits in one tile of every stage gives exactly the
untiled generator's output (no extra pass).

Latent tiles (rather than the whole generator on pixel tiles) let the UNet tiles, which carry the
restoration, be sized to what the UNet was trained on, independently of the VAE's memory-bound
tiles, and the decoder sees one continuous latent.

On CUDA the stages run under bf16 autocast (weights stay fp32; norms run in fp32); on CPU in fp32.

    pairforge upscale INPUT OUTPUT --model EXPORT_DIR          (see clusters/commands/upscale.py)
    upscale_file(EXPORT_DIR, "input.png", "output.png", scale=4)   (from Python)
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from pairforge.errors import PairforgeError, UsageError
from pairforge.training.model import pixels
from pairforge.training.model.colorfix import apply_color_fix

#: output-pixel side of a UNet tile (64 latents for an 8× VAE: SD2.1-base's native 512 px)
DEFAULT_TILE = 512
#: output pixels two neighbouring UNet tiles share at the default tile (a quarter of it; see default_overlap)
DEFAULT_OVERLAP = 128
#: output-pixel side of a VAE tile (the VAE's full-resolution activations dominate memory)
DEFAULT_VAE_TILE = 1024
#: SR scale used when neither the caller nor the export says (D3SR and OSEDiff train ×4)
DEFAULT_SCALE = 4

Stage = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- tiling
def _ramp(n: int) -> torch.Tensor:
    """A rising raised-cosine of ``n`` samples strictly inside (0, 1); ``r[i] + r[n-1-i] == 1``."""
    return 0.5 - 0.5 * torch.cos(torch.pi * (torch.arange(n, dtype=torch.float64) + 0.5) / n)


def _window(size: int, overlap: int, lead: bool, trail: bool) -> torch.Tensor:
    """1-D weight of one tile: 1 inside; on each side that has a neighbour (``lead``: one before,
    ``trail``: one after) a band of zeros (an eighth of the overlap: the samples next to the tile's
    zero padding) then a raised-cosine ramp over the rest of the overlap; flat at image borders."""
    w = torch.ones(size, dtype=torch.float64)
    if overlap <= 0:
        return w
    zero = overlap // 8
    edge = torch.cat([torch.zeros(zero, dtype=torch.float64), _ramp(overlap - 2 * zero)])
    if lead:
        w[:len(edge)] = edge
    if trail:
        w[size - len(edge):] = torch.minimum(w[size - len(edge):], edge.flip(0))
    return w


def _starts(length: int, tile: int, step: int) -> list[int]:
    """Tile origins covering ``[0, length)``: every ``step``, and the last one flush with the end."""
    if length <= tile:
        return [0]
    return sorted(set(range(0, length - tile, step)) | {length - tile})


def default_overlap(tile: int) -> int:
    """The overlap used when only a tile side is given: a quarter of the tile, as at the default
    tile (128 of 512), and never more than :data:`DEFAULT_OVERLAP`; ``tile`` ≤ 0 (untiled) keeps it."""
    return DEFAULT_OVERLAP if tile <= 0 else min(DEFAULT_OVERLAP, tile // 4)


class Tiling:
    """Overlapping ``tile``² windows over an h × w map, and their blending weights.

    Sides are in the map's units; ``factor`` scales the weights to a stage's output (a VAE
    decoder tile of t latents gives t·f pixels); ``tile``, ``overlap`` and every tile origin
    times ``factor`` must be whole.
    """

    def __init__(self, h: int, w: int, tile: int, overlap: int):
        self.h, self.w, self.overlap = h, w, overlap
        self.th, self.tw = min(tile, h), min(tile, w)
        if (self.th < h and self.th <= overlap) or (self.tw < w and self.tw <= overlap):
            raise ValueError(f"tile {tile} must be larger than its overlap {overlap}")
        self.boxes = [(y, x) for y in _starts(h, self.th, self.th - overlap)
                      for x in _starts(w, self.tw, self.tw - overlap)]

    def window(self, box: tuple[int, int], factor: Fraction | int = 1) -> torch.Tensor:
        """The tile's 2-D weight (float64) at ``factor`` × the map's resolution."""
        y, x = box
        f = Fraction(factor)
        wy = _window(_whole(self.th * f), _whole(self.overlap * f), y > 0, y + self.th < self.h)
        wx = _window(_whole(self.tw * f), _whole(self.overlap * f), x > 0, x + self.tw < self.w)
        return wy[:, None] * wx[None, :]

    def shares(self) -> list[torch.Tensor]:
        """Each tile's weight divided by the sum over tiles: a partition of unity (float64)."""
        total = torch.zeros(self.h, self.w, dtype=torch.float64)
        windows = [self.window(b) for b in self.boxes]
        for (y, x), wt in zip(self.boxes, windows):
            total[y:y + self.th, x:x + self.tw] += wt
        return [wt / total[y:y + self.th, x:x + self.tw] for (y, x), wt in zip(self.boxes, windows)]

    def crops(self, x: torch.Tensor, boxes: list[tuple[int, int]]) -> torch.Tensor:
        return torch.cat([x[:, :, y:y + self.th, x0:x0 + self.tw] for y, x0 in boxes])


def _whole(v: Fraction) -> int:
    if v.denominator != 1:
        raise ValueError(f"tile geometry is not whole at this scale ({v})")
    return int(v)


def _chunks(items: list, size: int) -> list[list]:
    size = max(1, size)
    return [items[i:i + size] for i in range(0, len(items), size)]


def blend_tiles(stage: Stage, x: torch.Tensor, tile: int, overlap: int, factor: Fraction | int = 1,
                batch: int = 1) -> torch.Tensor:
    """Run ``stage`` on overlapping ``tile``² windows of ``x`` (1,C,H,W) and blend the results.

    ``stage`` maps a (B,C,t,t) batch to (B,C',t·factor,t·factor); up to ``batch`` tiles go
    through it at once. One tile (``tile`` ≥ both sides) returns ``stage(x)`` unchanged (float32).
    """
    f = Fraction(factor)
    tiling = Tiling(x.shape[-2], x.shape[-1], tile, overlap)
    if len(tiling.boxes) == 1:
        return stage(x).float()
    out = wsum = None
    for idx in _chunks(list(range(len(tiling.boxes))), batch):
        res = stage(tiling.crops(x, [tiling.boxes[i] for i in idx])).float()
        if out is None:
            size = (_whole(tiling.h * f), _whole(tiling.w * f))
            out = torch.zeros(1, res.shape[1], *size, device=res.device)
            wsum = torch.zeros(1, 1, *size, device=res.device)
        for i, r in zip(idx, res):
            y, x0 = (_whole(v * f) for v in tiling.boxes[i])
            wt = tiling.window(tiling.boxes[i], f).to(res.device, torch.float32)
            out[:, :, y:y + wt.shape[0], x0:x0 + wt.shape[1]] += r * wt
            wsum[:, :, y:y + wt.shape[0], x0:x0 + wt.shape[1]] += wt
    if float(wsum.min()) <= 0:
        raise AssertionError("tile weights leave pixels uncovered")  # a geometry bug, never data
    return out / wsum


# --------------------------------------------------------------------------- shared GroupNorm statistics
class SharedGroupNorm:
    """Makes every GroupNorm in ``module`` normalise all tiles with the same statistics.

    A GroupNorm normalises with its input's mean and variance over the whole spatial extent, so a
    tile normalised on its own gets its own brightness and contrast, and neighbouring tiles
    disagree. Tiled VAE (MultiDiffusion-upscaler) shares statistics across tiles; here in two
    passes. In the first (:meth:`pooling`) each tile is normalised on its own while every norm's
    input statistics are pooled over all tiles, each tile's samples weighted by its share of the
    blend (:meth:`Tiling.shares`, resized to the layer's resolution: every position counts once,
    and samples next to a tile's zero padding count little). In the second (:meth:`sharing`)
    every tile is normalised with the pooled statistics. The first norm's pooled statistics are
    the whole image's; deeper norms' are pooled from inputs that were normalised tile by tile, an
    approximation that is the same for every tile. (Repeating the pooling pass with the pooled
    statistics makes one more norm exact per pass, but did not bring the output closer to the
    untiled one in ``tests/test_upscale.py``, so one pass it is.)
    """

    def __init__(self, module: nn.Module):
        self.norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
        #: (B,1,h,w) blend shares of the tiles of the next call; set before each call while pooling
        self.weights: torch.Tensor | None = None
        self._moments: list[tuple[float, torch.Tensor, torch.Tensor] | None] = [None] * len(self.norms)

    def _record(self, i: int, norm: nn.GroupNorm, x: torch.Tensor) -> None:
        """Fold this call's weighted (count, mean, M2) per group into norm ``i``'s (Chan et al.)."""
        b, c = x.shape[:2]
        g = norm.num_groups
        wt = self.weights.to(x.device, torch.float32)
        if wt.shape[-2:] != x.shape[-2:]:
            wt = F.interpolate(wt, size=x.shape[-2:], mode="area")
        wt = wt.reshape(b, 1, 1, -1)
        v = x.detach().float().reshape(b, g, c // g, -1)
        n = float(wt.sum()) * (c // g)
        mean = (v * wt).sum((0, 2, 3)) / n
        m2 = ((v - mean.view(1, g, 1, 1)).square() * wt).sum((0, 2, 3))
        mean, m2 = mean.double(), m2.double()
        if self._moments[i] is not None:
            n0, mean0, m20 = self._moments[i]
            delta, total = mean - mean0, n0 + n
            mean, m2, n = mean0 + delta * (n / total), m20 + m2 + delta.square() * (n0 * n / total), total
        self._moments[i] = (n, mean, m2)

    @staticmethod
    def _normalise(norm: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = norm.num_groups
        v = x.float().reshape(b, g, -1)
        y = ((v - mean.view(1, g, 1)) * torch.rsqrt(var.view(1, g, 1) + norm.eps)).reshape(x.shape)
        if norm.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * norm.weight.float().view(shape) + norm.bias.float().view(shape)
        return y.to(x.dtype)

    @contextmanager
    def _patched(self, forward: Callable[[int, nn.GroupNorm], Callable[[torch.Tensor], torch.Tensor]]) -> Iterator[None]:
        for i, n in enumerate(self.norms):
            n.forward = forward(i, n)
        try:
            yield
        finally:
            for n in self.norms:
                del n.forward

    @contextmanager
    def pooling(self) -> Iterator[None]:
        """Calls inside the block normalise as usual and pool statistics (set :attr:`weights`)."""
        def recording(i: int, norm: nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
            original = type(norm).forward

            def forward(x: torch.Tensor) -> torch.Tensor:
                self._record(i, norm, x)
                return original(norm, x)
            return forward

        self._moments = [None] * len(self.norms)
        with self._patched(recording):
            yield

    @contextmanager
    def sharing(self) -> Iterator[None]:
        """Calls inside the block normalise with the pooled statistics."""
        if any(m is None for m in self._moments):
            raise RuntimeError("SharedGroupNorm.sharing(): a norm has no pooled statistics")
        stats = [(mean.float(), (m2 / n).float()) for n, mean, m2 in self._moments]

        def shared(i: int, norm: nn.GroupNorm) -> Callable[[torch.Tensor], torch.Tensor]:
            mean, var = stats[i]
            return lambda x: self._normalise(norm, mean.to(x.device), var.to(x.device), x)

        with self._patched(shared):
            yield


def blend_tiles_shared_norm(stage: Stage, module: nn.Module, x: torch.Tensor, tile: int, overlap: int,
                            factor: Fraction | int = 1, batch: int = 1, share: bool = True) -> torch.Tensor:
    """:func:`blend_tiles`, with ``module``'s GroupNorm statistics shared across the tiles when
    ``share`` and there is more than one (one pooling pass more); one tile is the plain call."""
    tiling = Tiling(x.shape[-2], x.shape[-1], tile, overlap)
    if len(tiling.boxes) == 1 or not share:
        return blend_tiles(stage, x, tile, overlap, factor, batch)
    shares = torch.stack(tiling.shares())[:, None].float()  # (n,1,th,tw)
    shared = SharedGroupNorm(module)
    with shared.pooling():
        for idx in _chunks(list(range(len(tiling.boxes))), batch):
            shared.weights = shares[idx]
            stage(tiling.crops(x, [tiling.boxes[i] for i in idx]))
    with shared.sharing():
        return blend_tiles(stage, x, tile, overlap, factor, batch)


# --------------------------------------------------------------------------- the generator's stages
def down_factors(generator) -> tuple[int, int]:
    """(VAE down factor, UNet down factor): sides must be multiples of their product."""
    vae = 2 ** (len(generator.vae.config.block_out_channels) - 1)
    unet = 2 ** (len(generator.unet.config.block_out_channels) - 1)
    return vae, unet


def _encoder(g) -> Stage:
    return lambda x: g.vae.encode(x.to(g.dtype) * 2 - 1).latent_dist.mode() * g.latent_scale


def _denoiser(g) -> Stage:
    """z_L → ẑ_H = (z_L − √(1−ᾱ)·ε̂) / √ᾱ, as OneStepGenerator.forward."""
    a = g.alphas_cumprod[g.timestep].float()

    def run(z: torch.Tensor) -> torch.Tensor:
        t = torch.full((z.shape[0],), g.timestep, device=z.device, dtype=torch.long)
        context = g.prompt_embeds.to(g.dtype).expand(z.shape[0], -1, -1)
        eps = g.unet(z.to(g.dtype), t, encoder_hidden_states=context).sample
        return (z.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()
    return run


def _decoder(g) -> Stage:
    return lambda z: (g.vae.decode((z / g.latent_scale).to(g.dtype)).sample.float().clamp(-1, 1) + 1) / 2


def _round_down(n: int, m: int) -> int:
    return max(m, n // m * m)


def _pad_to(x: torch.Tensor, m: int) -> torch.Tensor:
    """Pad bottom/right to multiples of ``m`` by reflection (replication when the image is thinner)."""
    h, w = x.shape[-2:]
    ph, pw = -h % m, -w % m
    if not (ph or pw):
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")


class TileGeometry(NamedTuple):
    """Tile sides and overlaps of the three stages, each in its stage's input units."""
    multiple: int      # padded image sides are multiples of this (VAE × UNet down factors)
    factor: int        # VAE down factor f: pixels per latent
    vae_tile: int      # encoder tile side, pixels (decoder: vae_tile / f latents)
    vae_overlap: int   # encoder overlap, pixels (decoder: vae_overlap / f latents)
    unet_tile: int     # UNet tile side, latents
    unet_overlap: int  # UNet overlap, latents

    def tilings(self, height: int, width: int) -> list[tuple[Tiling, Fraction]]:
        """(tiling, output pixels per unit) of encode, UNet and decode for a padded image."""
        f = self.factor
        lh, lw = height // f, width // f
        return [(Tiling(height, width, self.vae_tile, self.vae_overlap), Fraction(1)),
                (Tiling(lh, lw, self.unet_tile, self.unet_overlap), Fraction(f)),
                (Tiling(lh, lw, self.vae_tile // f, self.vae_overlap // f), Fraction(f))]


#: stands for "no tiling": larger than any image
_UNTILED = 1 << 30


def tile_geometry(generator, tile: int, overlap: int, vae_tile: int) -> TileGeometry:
    """Aligned tile sides from output-pixel sizes (``tile``/``vae_tile`` ≤ 0: one tile).

    Tiles are rounded down to a multiple of the VAE × UNet down factors, overlaps up to a
    multiple of the VAE's and capped at half a tile; the VAE tiles overlap by a quarter.
    """
    f, fu = down_factors(generator)
    m = f * fu
    t = _UNTILED if tile <= 0 else _round_down(tile, m)
    vt = _UNTILED if vae_tile <= 0 else _round_down(vae_tile, m)
    ov = min(math.ceil(max(0, overlap) / f) * f, t // 2 // f * f)
    return TileGeometry(multiple=m, factor=f, vae_tile=vt, vae_overlap=vt // 4 // f * f,
                        unet_tile=t // f, unet_overlap=ov // f)


@torch.inference_mode()
def upscale_tensor(generator, lr: torch.Tensor, scale: int, tile: int = DEFAULT_TILE,
                   overlap: int | None = None, batch: int = 1, vae_tile: int = DEFAULT_VAE_TILE,
                   color_fix: str = "none", bf16: bool | None = None, share_norms: bool = True) -> torch.Tensor:
    """lr: (1,3,h,w) in [0,1] → (1,3,h·scale,w·scale) in [0,1], on the CPU.

    ``tile``/``overlap``/``vae_tile`` are in output pixels (≤ 0: untiled; ``overlap`` None:
    :func:`default_overlap` of the tile); ``batch`` tiles per call;
    ``bf16``: autocast (default: on CUDA only); ``share_norms``: GroupNorm statistics shared across
    tiles (:class:`SharedGroupNorm`; one extra pass per tiled stage) rather than per tile.
    """
    dev = next(generator.parameters()).device
    geo = tile_geometry(generator, tile, default_overlap(tile) if overlap is None else overlap, vae_tile)
    f = geo.factor
    ref = pixels.bicubic_input(lr, scale).to(dev)  # on the CPU, bit for bit training's LR↑
    h, w = ref.shape[-2:]
    x = _pad_to(ref, geo.multiple)
    use_bf16 = dev.type == "cuda" if bf16 is None else bf16
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
        z = blend_tiles_shared_norm(_encoder(generator), generator.vae.encoder, x, geo.vae_tile,
                                    geo.vae_overlap, Fraction(1, f), batch, share_norms)
        z = blend_tiles_shared_norm(_denoiser(generator), generator.unet, z, geo.unet_tile,
                                    geo.unet_overlap, 1, batch, share_norms)
        sr = blend_tiles_shared_norm(_decoder(generator), generator.vae.decoder, z, geo.vae_tile // f,
                                     geo.vae_overlap // f, f, batch, share_norms)
    sr = apply_color_fix(sr[:, :, :h, :w], ref, color_fix)
    return sr.clamp(0, 1).cpu()


# --------------------------------------------------------------------------- device
class DeviceUnavailable(UsageError, ValueError):
    """A ``--device`` that is not a torch device, or one this machine does not have (exit 2)."""


def check_device(name: str | None) -> str:
    """The device to run on: ``name`` if this machine has it, else :class:`DeviceUnavailable`
    with one line; None picks cuda when available, else cpu. Checked before any model loads, so
    ``--device cuda`` on a CPU machine is a usage error, not a traceback from deep inside torch."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceUnavailable(f"--device {name}: not a torch device (cpu, cuda, cuda:N, …)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"--device {name} asked for, but CUDA is not available on this machine "
                                    "(use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        checks = [getattr(getattr(m, dev.type, None), "is_available", None) for m in (torch, torch.backends)]
        if not any(check is not None and check() for check in checks):
            raise DeviceUnavailable(f"--device {name} is not available on this machine")
    return name


# --------------------------------------------------------------------------- files
def load_generator(export_dir: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32):
    from pairforge.training.model.networks.generator import OneStepGenerator

    device = check_device(device)
    try:
        gen = OneStepGenerator.from_export(export_dir, torch_dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:  # files missing, or a config/weights file no export holds
        if isinstance(exc, PairforgeError):
            raise
        raise pixels.ExportError(f"{export_dir}: not a generator export that loads: {type(exc).__name__}: {exc}") from exc
    return gen.to(device)


def read_image(path: str | Path) -> torch.Tensor:
    """(1,3,h,w) float in [0,1], read through the one reader (:func:`pixels.read_image`: the
    pipeline's decoder, so a file gives the pixels ``eval`` and ``synth`` see);
    :class:`pixels.UnreadableImage` (one line) when the file cannot be read or decoded."""
    return pixels.to_float(pixels.read_image(path))[None]


def write_image(image: torch.Tensor, path: str | Path) -> Path:
    """Save (1,3,H,W) in [0,1] as 8-bit RGB (:func:`pixels.to_uint8`'s rounding); the format follows the suffix."""
    from PIL import Image

    arr = pixels.to_uint8(image)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return Path(path)


def upscale_file(export_dir: str | Path, src: str | Path, dst: str | Path, scale: int = DEFAULT_SCALE,
                 tile: int = DEFAULT_TILE, overlap: int | None = None, device: str | None = None,
                 color_fix: str = "none") -> Path:
    """One image file through an export, written at ``dst`` (the overlap follows the tile when not given)."""
    gen = load_generator(export_dir, device)
    return write_image(upscale_tensor(gen, read_image(src), scale, tile, overlap, color_fix=color_fix), dst)
