"""Naive baseline: the Real-ESRGAN second-order degradation as BasicSR implements it.

This is a self-contained, plain-torch re-implementation of the *reference* algorithm
(``options/train_realesrgan_x4plus.yml`` settings; see ``shared/reference/degradation.md`` §1)
used only as the speed baseline in ``bench/degradations.py``. It deliberately keeps the
reference's structure and costs:

* kernels are generated per sample on the CPU with numpy in a Python loop, as the dataset's
  ``__getitem__`` does (iso/aniso Gaussian, generalized, plateau, sinc; zero-padded to 21x21),
  then stacked and moved to the device (the collate + ``.to(device)``);
* USM sharpening uses a full, non-separable 51x51 Gaussian (sigma 8) applied with conv2d,
  twice (image blur and mask blur);
* the resize direction/scale/mode, Gaussian-vs-Poisson choice, second-blur on/off and final
  order are drawn once per batch; noise strength, gray flag and JPEG quality per sample;
* gray Gaussian noise shares one (H, W) field across the batch (reference quirk);
* Poisson noise counts unique levels with ``torch.unique`` per sample (a host sync each);
* JPEG is a DiffJPEG-style codec (zero pad to 16, YCbCr, 2x2 average-pool chroma, 8x8 DCT,
  quantisation with the reference's transposed tables, nearest chroma upsampling) with a Python
  loop over the batch to turn each quality into a scale factor (one host sync per sample);
* ``filter2D`` = reflect pad + grouped conv2d (one kernel per sample);
* final ``round(x*255).clamp(0,255)``.

Nothing here is meant to be fast or to be used for producing data; pairforge's ``degradations``
package is the real engine. The training-side extras of ``feed_data`` (paired random crop, the
USM recompute on the 256 crop, the 180-sample pool) are not part of the LR synthesis and are
left out.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

try:  # scipy ships with scikit-image; fall back to torch's Bessel J1 if it is missing
    from scipy.special import j1 as _bessel_j1
except Exception:  # pragma: no cover - depends on the environment
    def _bessel_j1(x):
        return torch.special.bessel_j1(torch.as_tensor(x, dtype=torch.float64)).numpy()


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NaiveSettings:
    """The reference ranges (train_realesrgan_x4plus.yml). Probabilities are as in the YAML."""

    name: str = "realesrgan-x4plus"
    scale: int = 4
    use_usm: bool = True
    usm_radius: int = 51  # cv2.getGaussianKernel(51, 0) -> sigma 8
    usm_conv: str = "batch"  # BasicSR's literal (B*C,1,H,W) conv; "grouped": a faster CPU form
    kernel_range: tuple = tuple(range(7, 22, 2))
    kernel_list: tuple = ("iso", "aniso", "generalized_iso", "generalized_aniso",
                          "plateau_iso", "plateau_aniso")
    kernel_prob: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    pad_to: int = 21
    # first order
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    betag_range: tuple = (0.5, 4.0)
    betap_range: tuple = (1.0, 2.0)
    resize_prob: tuple = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple = (1.0, 30.0)
    poisson_scale_range: tuple = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple = (30.0, 95.0)
    # second order
    second_blur_prob: float = 0.8
    sinc_prob2: float = 0.1
    blur_sigma2: tuple = (0.2, 1.5)
    betag_range2: tuple = (0.5, 4.0)
    betap_range2: tuple = (1.0, 2.0)
    resize_prob2: tuple = (0.3, 0.4, 0.3)
    resize_range2: tuple = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple = (1.0, 25.0)
    poisson_scale_range2: tuple = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple = (30.0, 95.0)
    final_sinc_prob: float = 0.8


PRESETS = {
    "realesrgan-x4plus": NaiveSettings(),
    # OSEDiff-like: 512 HR crops, USM commented out, the same ranges otherwise.
    "osediff": NaiveSettings(name="osediff", use_usm=False),
}

DEFAULT_HR = {"realesrgan-x4plus": 400, "osediff": 512}


def settings_for(name: str, **overrides) -> NaiveSettings:
    if name not in PRESETS:
        raise KeyError(f"unknown naive preset {name!r}; known: {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------------
# kernels (numpy, per sample, CPU) — the dataset side
# --------------------------------------------------------------------------------------------
def _grid(ks: int) -> np.ndarray:
    """(ks, ks, 2) array of (x, y) offsets from the kernel centre."""
    r = np.arange(ks, dtype=np.float64) - (ks - 1) / 2.0
    xx, yy = np.meshgrid(r, r)
    return np.stack([xx, yy], axis=-1)


def _covariance(sx: float, sy: float, theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sx * sx, sy * sy]) @ rot.T


def _quad_form(ks: int, cov: np.ndarray) -> np.ndarray:
    """x^T Sigma^-1 x on the grid."""
    g = _grid(ks)
    inv = np.linalg.inv(cov)
    return np.einsum("hwi,ij,hwj->hw", g, inv, g)


def gaussian_kernel(ks, sx, sy, theta):
    k = np.exp(-0.5 * _quad_form(ks, _covariance(sx, sy, theta)))
    return k / k.sum()


def generalized_kernel(ks, sx, sy, theta, beta):
    k = np.exp(-0.5 * np.power(_quad_form(ks, _covariance(sx, sy, theta)), beta))
    return k / k.sum()


def plateau_kernel(ks, sx, sy, theta, beta):
    k = 1.0 / (np.power(_quad_form(ks, _covariance(sx, sy, theta)), beta) + 1.0)
    return k / k.sum()


def sinc_kernel(ks: int, omega: float, pad_to: int = 0) -> np.ndarray:
    """Circular low-pass (2-D sinc / Airy) kernel with cutoff omega, normalised."""
    r = np.hypot(*np.moveaxis(_grid(ks), -1, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega * _bessel_j1(omega * r) / (2 * math.pi * r)
    c = (ks - 1) // 2
    k[c, c] = omega * omega / (4 * math.pi)  # limit at r = 0
    k = k / k.sum()
    if pad_to and pad_to > ks:
        p = (pad_to - ks) // 2
        k = np.pad(k, ((p, p), (p, p)))
    return k


def _draw_beta(rng: np.random.RandomState, lo: float, hi: float) -> float:
    # Reference behaviour: half the time below 1, half the time above (U(1,1) == 1 for plateau).
    return rng.uniform(lo, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.0, hi)


def mixed_kernel(rng, ks, kernel_list, kernel_prob, sigma, betag, betap):
    kind = rng.choice(list(kernel_list), p=np.asarray(kernel_prob) / np.sum(kernel_prob))
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sx = rng.uniform(*sigma)
    if iso:
        sy, theta = sx, 0.0
    else:
        sy = rng.uniform(*sigma)
        theta = rng.uniform(-math.pi, math.pi)
    if kind in ("iso", "aniso"):
        return gaussian_kernel(ks, sx, sy, theta)
    if kind.startswith("generalized"):
        return generalized_kernel(ks, sx, sy, theta, _draw_beta(rng, *betag))
    return plateau_kernel(ks, sx, sy, theta, _draw_beta(rng, *betap))


def _blur_kernel(rng: np.random.RandomState, pyrng: random.Random, s: NaiveSettings, second: bool):
    ks = pyrng.choice(s.kernel_range)
    sinc_p = s.sinc_prob2 if second else s.sinc_prob
    if rng.uniform() < sinc_p:
        omega = rng.uniform(math.pi / 3, math.pi) if ks < 13 else rng.uniform(math.pi / 5, math.pi)
        k = sinc_kernel(ks, omega)
    else:
        k = mixed_kernel(rng, ks, s.kernel_list, s.kernel_prob,
                         s.blur_sigma2 if second else s.blur_sigma,
                         s.betag_range2 if second else s.betag_range,
                         s.betap_range2 if second else s.betap_range)
    p = (s.pad_to - ks) // 2
    return np.pad(k, ((p, p), (p, p)))


def sample_kernels(s: NaiveSettings, rng: np.random.RandomState, pyrng: random.Random):
    """What one dataset ``__getitem__`` call produces: kernel1, kernel2, sinc_kernel (21x21)."""
    k1 = _blur_kernel(rng, pyrng, s, second=False)
    k2 = _blur_kernel(rng, pyrng, s, second=True)
    if rng.uniform() < s.final_sinc_prob:
        ks = pyrng.choice(s.kernel_range)
        k3 = sinc_kernel(ks, rng.uniform(math.pi / 3, math.pi), pad_to=s.pad_to)
    else:
        k3 = np.zeros((s.pad_to, s.pad_to))
        k3[s.pad_to // 2, s.pad_to // 2] = 1.0
    return (torch.from_numpy(k1.astype(np.float32)), torch.from_numpy(k2.astype(np.float32)),
            torch.from_numpy(k3.astype(np.float32)))


# --------------------------------------------------------------------------------------------
# device-side ops
# --------------------------------------------------------------------------------------------
def filter2d(img: torch.Tensor, kernel: torch.Tensor, shared: str = "batch") -> torch.Tensor:
    """Reflect pad + conv2d. kernel (1,k,k): one kernel for all; (B,k,k): one per sample.

    For a shared kernel BasicSR convolves a (B*C, 1, H, W) batch with one (1,1,k,k) weight
    (``shared="batch"``, the default: the reference as written). On the CPU builds of torch 2.14
    that path is several times slower than the same arithmetic as a grouped conv over B*C
    channels (``shared="grouped"``), which the benchmark also times, so that no speed-up is
    credited to a slow conv path alone.
    """
    k = kernel.shape[-1]
    assert k % 2 == 1, "kernel size must be odd"
    b, c, h, w = img.shape
    x = F.pad(img, (k // 2,) * 4, mode="reflect")
    ph, pw = x.shape[-2:]
    if kernel.shape[0] == 1 and shared == "batch":
        out = F.conv2d(x.reshape(b * c, 1, ph, pw), kernel.reshape(1, 1, k, k))
    else:
        kb = kernel.reshape(-1, 1, k, k).expand(b, 1, k, k)
        weight = kb.repeat(1, c, 1, 1).reshape(b * c, 1, k, k)
        out = F.conv2d(x.reshape(1, b * c, ph, pw), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def usm_kernel(radius: int = 51) -> torch.Tensor:
    """Full 2-D Gaussian as cv2.getGaussianKernel(radius, 0) outer itself: (1, r, r)."""
    if radius % 2 == 0:
        radius += 1
    sigma = 0.3 * ((radius - 1) * 0.5 - 1) + 0.8  # OpenCV's rule for sigma <= 0
    x = np.arange(radius) - (radius - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    g /= g.sum()
    return torch.from_numpy(np.outer(g, g).astype(np.float32))[None]


def usm_sharp(img: torch.Tensor, kernel: torch.Tensor, weight=0.5, threshold=10,
              shared: str = "batch") -> torch.Tensor:
    blur = filter2d(img, kernel, shared)
    residual = img - blur
    mask = (residual.abs() * 255 > threshold).float()
    soft = filter2d(mask, kernel, shared)
    sharp = (img + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * img


def _rgb_to_gray(img: torch.Tensor) -> torch.Tensor:
    r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
    return 0.2989 * r + 0.587 * g + 0.114 * b


def gaussian_noise(img: torch.Tensor, sigma_range, gray_prob) -> torch.Tensor:
    b, _, h, w = img.shape
    sigma = (torch.rand(b, device=img.device) * (sigma_range[1] - sigma_range[0])
             + sigma_range[0]).view(b, 1, 1, 1)
    gray = (torch.rand(b, device=img.device) < gray_prob).float().view(b, 1, 1, 1)
    noise = torch.randn_like(img) * sigma / 255.0
    if bool(gray.sum() > 0):  # host sync, as in the reference
        # quirk kept: ONE (H, W) field for the whole batch, scaled per sample
        field = torch.randn(h, w, device=img.device, dtype=img.dtype) * sigma / 255.0
        noise = noise * (1 - gray) + field.view(b, 1, h, w) * gray
    return (img + noise).clamp(0, 1)


def _levels(x: torch.Tensor) -> torch.Tensor:
    counts = [len(torch.unique(x[i])) for i in range(x.shape[0])]  # one host sync per sample
    vals = [2 ** math.ceil(math.log2(n)) for n in counts]
    return x.new_tensor(vals).view(-1, 1, 1, 1)


def poisson_noise(img: torch.Tensor, scale_range, gray_prob) -> torch.Tensor:
    b, _, h, w = img.shape
    scale = (torch.rand(b, device=img.device) * (scale_range[1] - scale_range[0])
             + scale_range[0]).view(b, 1, 1, 1)
    gray = (torch.rand(b, device=img.device) < gray_prob).float().view(b, 1, 1, 1)
    use_gray = bool(gray.sum() > 0)
    if use_gray:
        g = (_rgb_to_gray(img) * 255.0).round().clamp(0, 255) / 255.0
        v = _levels(g)
        noise_gray = (torch.poisson(g * v) / v - g).expand(b, 3, h, w)
    q = (img * 255.0).round().clamp(0, 255) / 255.0
    v = _levels(q)
    noise = torch.poisson(q * v) / v - q
    if use_gray:
        noise = noise * (1 - gray) + noise_gray * gray
    return (img + noise * scale).clamp(0, 1)


# --------------------------------------------------------------------------------------------
# DiffJPEG-style codec
# --------------------------------------------------------------------------------------------
# Standard luminance / chrominance tables (ITU-T T.81 Annex K), stored transposed as the
# reference DiffJPEG does (its open issue #2): the effective quantiser is table^T.
_LUMA = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], dtype=np.float32).T
_CHROMA = np.full((8, 8), 99, dtype=np.float32)
_CHROMA[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66],
                            [24, 26, 56, 99], [47, 66, 99, 99]], dtype=np.float32).T


def _dct_basis() -> torch.Tensor:
    """C[u, x] = a(u) * cos((2x+1) u pi / 16) with a(0)=sqrt(1/8), a(u>0)=sqrt(2/8) (orthonormal)."""
    u = np.arange(8)[:, None]
    x = np.arange(8)[None, :]
    c = np.cos((2 * x + 1) * u * math.pi / 16)
    a = np.where(u == 0, math.sqrt(1 / 8), math.sqrt(2 / 8))
    return torch.from_numpy((a * c).astype(np.float32))


class NaiveJPEG:
    """JPEG compress + decompress in torch, DiffJPEG style (non-differentiable rounding by default)."""

    def __init__(self, device, differentiable: bool = False):
        self.device = torch.device(device)
        self.differentiable = differentiable
        self.luma = torch.from_numpy(_LUMA).to(self.device)
        self.chroma = torch.from_numpy(_CHROMA).to(self.device)
        self.basis = _dct_basis().to(self.device)
        self.to_ycc = torch.tensor([[0.299, 0.587, 0.114],
                                    [-0.168736, -0.331264, 0.5],
                                    [0.5, -0.418688, -0.081312]], device=self.device)
        self.from_ycc = torch.tensor([[1.0, 0.0, 1.402],
                                      [1.0, -0.344136, -0.714136],
                                      [1.0, 1.772, 0.0]], device=self.device)
        self.offset = torch.tensor([0.0, 128.0, 128.0], device=self.device).view(1, 3, 1, 1)

    @staticmethod
    def _quality_to_factor(q: float) -> float:
        return (5000.0 / q if q < 50 else 200.0 - 2 * q) / 100.0

    def _round(self, x):
        r = torch.round(x)
        return r + (x - r) ** 3 if self.differentiable else r

    def _blocks(self, ch: torch.Tensor) -> torch.Tensor:  # (B,H,W) -> (B,N,8,8)
        b, h, w = ch.shape
        return ch.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(b, -1, 8, 8)

    @staticmethod
    def _unblocks(blk: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b = blk.shape[0]
        return blk.reshape(b, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h, w)

    def _code(self, ch: torch.Tensor, table: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        h, w = ch.shape[-2:]
        blk = self._blocks(ch) - 128.0
        coef = self.basis @ blk @ self.basis.T  # 2-D DCT-II per block
        q = table[None, None] * factor.view(-1, 1, 1, 1)
        coef = self._round(coef / q) * q  # quantise / dequantise
        blk = self.basis.T @ coef @ self.basis + 128.0
        return self._unblocks(blk, h, w)

    def __call__(self, img: torch.Tensor, quality) -> torch.Tensor:
        b, _, h, w = img.shape
        if isinstance(quality, (int, float)):
            factor = img.new_full((b,), self._quality_to_factor(float(quality)))
        else:
            factor = quality.clone()
            for i in range(b):  # per-sample Python loop with a host sync each, like the reference
                factor[i] = self._quality_to_factor(factor[i])
        ph, pw = (16 - h % 16) % 16, (16 - w % 16) % 16
        x = F.pad(img * 255.0, (0, pw, 0, ph))  # zero padding to a multiple of 16
        ycc = torch.einsum("ij,bjhw->bihw", self.to_ycc, x) + self.offset
        y = ycc[:, 0]
        cbcr = F.avg_pool2d(ycc[:, 1:], 2)  # 4:2:0 by 2x2 averaging
        H, W = y.shape[-2:]
        y = self._code(y, self.luma, factor)
        cb = self._code(cbcr[:, 0], self.chroma, factor)
        cr = self._code(cbcr[:, 1], self.chroma, factor)
        cbcr = torch.stack([cb, cr], 1).repeat_interleave(2, -2).repeat_interleave(2, -1)
        ycc = torch.cat([y[:, None], cbcr], 1) - self.offset
        rgb = torch.einsum("ij,bjhw->bihw", self.from_ycc, ycc)
        rgb = rgb.clamp(0, 255) / 255.0
        return rgb[:, :, :h, :w].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        # ^ the reference's output is channels_last-strided; keep that layout


# --------------------------------------------------------------------------------------------
# the chain
# --------------------------------------------------------------------------------------------
STAGES = ("kernels", "usm", "blur1", "resize1", "noise1", "jpeg1",
          "blur2", "resize2", "noise2", "final_resize", "final_sinc", "jpeg2", "quantize")


class NaiveDegrader:
    """Reference chain. ``deg(hr_uint8) -> lr_uint8``; ``profile=True`` fills ``last_stage_times``."""

    def __init__(self, preset: str | NaiveSettings = "realesrgan-x4plus", device="cpu",
                 profile: bool = False, seed: int = 0):
        self.s = settings_for(preset) if isinstance(preset, str) else preset
        self.device = torch.device(device)
        self.profile = profile
        self.usm = usm_kernel(self.s.usm_radius).to(self.device)
        self.jpeg = NaiveJPEG(self.device)
        self.last_stage_times: dict[str, float] = {}
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        # dataset-side RNGs (kernels) and main-process RNGs (batch-level choices)
        self.np_data = np.random.RandomState(seed)
        self.py_data = random.Random(seed)
        self.np_main = np.random.RandomState(seed + 1)
        self.py_main = random.Random(seed + 1)
        self.torch_gen_seed = seed

    @contextmanager
    def _stage(self, name: str):
        if not self.profile:
            yield
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_stage_times[name] = self.last_stage_times.get(name, 0.0) + time.perf_counter() - t0

    def _resize_choice(self, probs, rng_range):
        kind = self.py_main.choices(["up", "down", "keep"], probs)[0]
        if kind == "up":
            scale = self.np_main.uniform(1, rng_range[1])
        elif kind == "down":
            scale = self.np_main.uniform(rng_range[0], 1)
        else:
            scale = 1.0
        mode = self.py_main.choice(["area", "bilinear", "bicubic"])
        return scale, mode

    def _noise(self, x, gauss_p, sigma_range, poisson_range, gray_p):
        if self.np_main.uniform() < gauss_p:
            return gaussian_noise(x, sigma_range, gray_p)
        return poisson_noise(x, poisson_range, gray_p)

    def _jpeg(self, x, qrange):
        q = x.new_zeros(x.shape[0]).uniform_(*qrange)
        return self.jpeg(x.clamp(0, 1), quality=q)

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor) -> torch.Tensor:
        s = self.s
        self.last_stage_times = {}
        b, _, H, W = hr.shape
        with self._stage("kernels"):  # dataset __getitem__ loop + collate + transfer
            ks = [sample_kernels(s, self.np_data, self.py_data) for _ in range(b)]
            k1, k2, k3 = (torch.stack(t).to(self.device) for t in zip(*ks))
        x = hr.to(self.device).float() / 255.0
        with self._stage("usm"):
            gt = usm_sharp(x, self.usm, shared=s.usm_conv) if s.use_usm else x
        # ---- first order
        with self._stage("blur1"):
            out = filter2d(gt, k1)
        with self._stage("resize1"):
            scale, mode = self._resize_choice(s.resize_prob, s.resize_range)
            out = F.interpolate(out, scale_factor=scale, mode=mode)
        with self._stage("noise1"):
            out = self._noise(out, s.gaussian_noise_prob, s.noise_range,
                              s.poisson_scale_range, s.gray_noise_prob)
        with self._stage("jpeg1"):
            out = self._jpeg(out, s.jpeg_range)
        # ---- second order
        with self._stage("blur2"):
            if self.np_main.uniform() < s.second_blur_prob:
                out = filter2d(out, k2)
        with self._stage("resize2"):
            scale, mode = self._resize_choice(s.resize_prob2, s.resize_range2)
            out = F.interpolate(out, size=(int(H / s.scale * scale), int(W / s.scale * scale)),
                                mode=mode)
        with self._stage("noise2"):
            out = self._noise(out, s.gaussian_noise_prob2, s.noise_range2,
                              s.poisson_scale_range2, s.gray_noise_prob2)
        size = (H // s.scale, W // s.scale)
        if self.np_main.uniform() < 0.5:  # resize -> sinc -> JPEG
            with self._stage("final_resize"):
                out = F.interpolate(out, size=size, mode=self.py_main.choice(
                    ["area", "bilinear", "bicubic"]))
            with self._stage("final_sinc"):
                out = filter2d(out, k3)
            with self._stage("jpeg2"):
                out = self._jpeg(out, s.jpeg_range2)
        else:  # JPEG -> resize -> sinc
            with self._stage("jpeg2"):
                out = self._jpeg(out, s.jpeg_range2)
            with self._stage("final_resize"):
                out = F.interpolate(out, size=size, mode=self.py_main.choice(
                    ["area", "bilinear", "bicubic"]))
            with self._stage("final_sinc"):
                out = filter2d(out, k3)
        with self._stage("quantize"):
            lr = (out * 255.0).round().clamp(0, 255).to(torch.uint8)
        return lr


def degrade(hr: torch.Tensor, preset: str = "realesrgan-x4plus", device="cpu", seed: int = 0):
    """One-shot helper: uint8 (B,3,H,W) -> uint8 (B,3,H//4,W//4)."""
    return NaiveDegrader(preset, device=device, seed=seed)(hr)


if __name__ == "__main__":  # quick visual check: python -m bench.naive_reference out.png
    import sys

    from PIL import Image
    from skimage import data

    img = torch.from_numpy(data.astronaut()[:400, :400].copy()).permute(2, 0, 1)[None]
    hr = img.repeat(4, 1, 1, 1)
    torch.manual_seed(0)
    lr = NaiveDegrader("realesrgan-x4plus", seed=3)(hr)
    up = F.interpolate(lr.float(), scale_factor=4, mode="nearest").clamp(0, 255).byte()
    row = torch.cat([hr[0]] + [u for u in up], dim=2).permute(1, 2, 0).numpy()
    Image.fromarray(row).save(sys.argv[1] if len(sys.argv) > 1 else "/tmp/naive.png")
