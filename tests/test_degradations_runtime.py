"""The engine's CPU runtime helpers: the per-sample thread pool and the malloc policy."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading

import pytest
import torch

from pairforge.degradations.parallel import for_each_sample


def test_for_each_sample_calls_every_index_once_and_uses_threads() -> None:
    seen: list[int] = []
    names: set[str] = set()
    lock = threading.Lock()

    def work(i: int) -> None:
        with lock:
            seen.append(i)
            names.add(threading.current_thread().name)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for_each_sample(work, range(20))
    finally:
        torch.set_num_threads(threads)
    assert sorted(seen) == list(range(20))
    assert all(n.startswith("pairforge-sample") for n in names)


def test_for_each_sample_runs_inline_with_one_thread_and_reraises() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        names: set[str] = set()
        for_each_sample(lambda i: names.add(threading.current_thread().name), range(3))
        assert names == {threading.current_thread().name}
    finally:
        torch.set_num_threads(threads)

    def fail(i: int) -> None:
        if i == 2:
            raise ValueError("sample 2 is broken")

    torch.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="sample 2"):
            for_each_sample(fail, range(4))
    finally:
        torch.set_num_threads(threads)


def test_sample_pool_threads_use_one_torch_thread_and_leave_the_caller_its_own() -> None:
    """Run in a fresh process: there torch's setter, called from a new pool thread, would
    also change the default of the calling thread if the pool did not restore it."""
    code = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from pairforge.degradations.parallel import for_each_sample\n"
        "seen = []\n"
        "for_each_sample(lambda i: seen.append(torch.get_num_threads()), range(8))\n"
        "print(sorted(set(seen)), torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[1] 2"


def _policy_in_subprocess(env_extra: dict[str, str]) -> str:
    code = "from pairforge.degradations.memory import retain_freed_memory as r; print(r(), r())"
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_policy_applies_once_and_can_be_declined() -> None:
    assert _policy_in_subprocess({}) == "True True"
    assert _policy_in_subprocess({"PAIRFORGE_KEEP_MALLOC": "1"}) == "False False"


def test_building_and_running_a_degrader_leaves_the_host_allocator_alone() -> None:
    """A library object must not change process-wide settings; only entry points opt in."""
    code = ("import torch\n"
            "from pairforge.degradations import Degrader, load_preset, retain_freed_memory\n"
            "deg = Degrader(load_preset('realesrgan-x4plus'), device='cpu')\n"
            "deg(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), keys=['a'], seed=0)\n"
            "print(retain_freed_memory.cache_info().currsize)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "0"


def test_strip_split_depthwise_equals_one_plain_grouped_conv() -> None:
    import torch.nn.functional as F

    from pairforge.degradations import filters

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 300, 170, generator=g)  # 280 output rows: 5 strips, the last partial
    kernels = torch.rand(2, 21, 21, generator=g)
    kernels /= kernels.sum(dim=(1, 2), keepdim=True)
    got = filters._depthwise(x, kernels)
    weight = kernels.repeat_interleave(3, dim=0).view(6, 1, 21, 21)
    want = F.conv2d(x.reshape(1, 6, 300, 170), weight, groups=6).view(2, 3, 280, 150)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def _ragged_canvas_and_kernels():
    from pairforge.degradations.canvas import Canvas

    g = torch.Generator().manual_seed(3)
    # tall, wide, narrower than the kernel's half width (reflects twice), and one unblurred
    sizes = [(150, 97), (64, 200), (7, 9), (33, 5), (90, 90)]
    images = [torch.rand(3, h, w, generator=g) for h, w in sizes]
    params = [{"family": "iso", "size": 21, "support": 21, "sigma_x": 2.0, "sigma_y": 2.0, "theta": 0.0},
              {"family": "aniso", "size": 13, "support": 21, "sigma_x": 2.5, "sigma_y": 0.7, "theta": 0.6},
              {"family": "plateau_iso", "size": 9, "support": 21, "sigma_x": 1.2, "sigma_y": 1.2, "theta": 0.0,
               "beta": 1.5},
              {"family": "sinc", "size": 21, "support": 21, "omega": 1.3},
              None]
    return Canvas.from_list(images), params


def test_per_image_blur_matches_the_reflect_padded_definition_and_the_batched_path() -> None:
    """CPU blurs image by image; CUDA in grouped canvases. Both must equal a plain
    reflect-padded correlation of each image on its own (narrow images reflect twice)."""
    import torch.nn.functional as F

    from pairforge.degradations import filters
    from pairforge.degradations.canvas import Canvas
    from pairforge.degradations.kernels import build_kernels

    canvas, params = _ragged_canvas_and_kernels()
    per_image = filters.blur(canvas, params)
    kernels = build_kernels(params)
    index = [i for i, p in enumerate(params) if p is not None]
    batched = canvas.data.clone()
    filters._blur_batched(canvas, params, kernels, index, batched)
    for i, p in enumerate(params):
        got = per_image.crop(i)
        if p is None:
            assert torch.equal(got, canvas.crop(i))
            continue
        alone = Canvas.uniform(canvas.crop(i).unsqueeze(0).contiguous())
        half = filters._conv_support(p) // 2
        k = filters._support_kernel(kernels[i], p)
        want = F.conv2d(alone.extended(half, half, "reflect"), k.expand(3, 1, *k.shape), groups=3)[0]
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-6, rtol=0), i
        h, w = canvas.sizes[i]
        assert torch.allclose(batched[i, :, :h, :w], want, atol=1e-6, rtol=0), i


def test_cpu_blur_cuts_negligible_kernel_rings_without_changing_results() -> None:
    """Small-σ Gaussians are convolved at their numerical extent; heavy-tailed kernels
    (plateau, sinc) keep all 21×21 taps; either way the result is the full correlation's."""
    import torch.nn.functional as F

    from pairforge.degradations import filters
    from pairforge.degradations.canvas import Canvas
    from pairforge.degradations.kernels import build_kernels

    def iso(sigma: float) -> dict:
        return {"family": "iso", "size": 21, "support": 21, "sigma_x": sigma, "sigma_y": sigma, "theta": 0.0}

    params = [iso(0.2), iso(0.5), iso(1.0), iso(3.0),
              {"family": "plateau_iso", "size": 21, "support": 21, "sigma_x": 0.5, "sigma_y": 0.5,
               "theta": 0.0, "beta": 1.5},
              {"family": "sinc", "size": 21, "support": 21, "omega": 1.0}]
    kernels = build_kernels(params)
    halves = [filters._effective_half(k) for k in kernels]
    assert halves[0] <= 1 and halves[1] <= 3 and halves[2] <= 7
    assert halves[3:] == [10, 10, 10]
    for k, half in zip(kernels, halves):
        outside = k.abs().sum() - k[10 - half : 11 + half, 10 - half : 11 + half].abs().sum()
        assert outside <= filters._NEGLIGIBLE_MASS
    g = torch.Generator().manual_seed(5)
    images = torch.rand(len(params), 3, 80, 70, generator=g)
    got = filters.blur(Canvas.uniform(images), params).data
    padded = F.pad(images, (10, 10, 10, 10), mode="reflect")
    for i, k in enumerate(kernels):
        full = F.conv2d(padded[i : i + 1], k.expand(3, 1, 21, 21), groups=3)[0]
        assert (got[i] - full).abs().max() < 2e-7


@pytest.mark.parametrize("backend", ["real", "differentiable"])
def test_jpeg_of_a_sample_does_not_depend_on_its_batch(backend: str) -> None:
    """Float outputs, not just 8-bit ones: kornia's batched codec differs from its
    one-image call by ~2e-7, which flips an 8-bit level only now and then."""
    from pairforge.degradations.canvas import Canvas
    from pairforge.degradations.jpeg import jpeg

    g = torch.Generator().manual_seed(9)
    images = [torch.rand(3, h, w, generator=g) for h, w in [(64, 48), (64, 48), (40, 72), (64, 48), (33, 17)]]
    qualities = [30, 50, 70, 90, 45]
    batch, _ = jpeg(Canvas.from_list(images), qualities, backend)
    for i, image in enumerate(images):
        alone, _ = jpeg(Canvas.uniform(image.unsqueeze(0)), [qualities[i]], backend)
        assert torch.equal(batch.crop(i), alone.crop(0)), i


@pytest.mark.parametrize("h, w, size, factor", [(96, 80, (33, 28), 0.35), (40, 57, (52, 74), 1.3),
                                                (64, 64, (45, 45), None), (31, 50, (31, 50), 1.0)])
def test_bilinear_resize_equals_torch_bilinear_and_ignores_the_thread_count(h, w, size, factor) -> None:
    """Two 1-D passes give F.interpolate's bilinear values (same float32 coordinates and
    weights: within rounding, where float64 coordinates would be 3e-5 off) and, unlike
    it, the same values with any thread count."""
    import torch.nn.functional as F

    from pairforge.degradations.resize import _linear

    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        kwargs = {"scale_factor": factor, "recompute_scale_factor": False} if factor else {"size": size}
        want = F.interpolate(x, mode="bilinear", align_corners=False, **kwargs)
        one = _linear(x, size, factor).contiguous()
        torch.set_num_threads(2)
        two = _linear(x, size, factor).contiguous()
    finally:
        torch.set_num_threads(threads)
    assert tuple(one.shape[-2:]) == size
    assert torch.equal(one, two)
    assert torch.allclose(one, want, atol=2e-7, rtol=0)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "area"])
def test_resizing_to_the_same_size_is_an_exact_copy_in_every_mode(mode: str) -> None:
    """resize() skips such samples; that is only right because torch returns the input."""
    import torch.nn.functional as F

    from pairforge.degradations.canvas import Canvas
    from pairforge.degradations.resize import resize

    x = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(1))
    kwargs = {"align_corners": False} if mode != "area" else {}
    assert torch.equal(F.interpolate(x, size=(37, 53), mode=mode, **kwargs), x)
    if mode != "area":
        same = F.interpolate(x, scale_factor=1.0, mode=mode, recompute_scale_factor=False, **kwargs)
        assert torch.equal(same, x)
    out = resize(Canvas.uniform(x), [{"mode": mode, "size": [37, 53], "factor": 1.0}], by_factor=True)
    assert torch.equal(out.data, x)
