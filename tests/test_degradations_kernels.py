"""Blur kernels against their analytic definitions."""
import math

import numpy as np
import pytest
import torch
from scipy import special

from pairforge.degradations.kernels import build_kernels, gaussian_kernel1d, opencv_default_sigma


def _moments(k: torch.Tensor):
    k = k.double()
    ax = torch.arange(k.shape[-1], dtype=torch.float64) - (k.shape[-1] - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    def m(f):
        return float((k * f).sum())

    return m(xx), m(yy), m(xx * xx), m(yy * yy), m(xx * yy)


def _reference_gaussian(size, sx, sy, theta):
    """Straight from the definition, in numpy: Σ = R diag(σx², σy²) Rᵀ, k ∝ exp(−½ xᵀΣ⁻¹x)."""
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    sigma = r @ np.diag([sx**2, sy**2]) @ r.T
    inv = np.linalg.inv(sigma)
    ax = np.arange(-(size // 2), size // 2 + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    grid = np.stack([xx, yy], -1)
    q = np.einsum("...i,ij,...j->...", grid, inv, grid)
    k = np.exp(-0.5 * q)
    return k / k.sum()


@pytest.mark.parametrize("family", ["iso", "aniso", "generalized_aniso", "plateau_iso", "sinc"])
def test_kernels_are_normalized_and_masked_to_their_size(family):
    params = [{"family": family, "size": 9, "sigma_x": 1.5, "sigma_y": 0.7, "theta": 0.4, "beta": 1.7, "omega": 1.2}]
    k = build_kernels(params)[0]
    assert k.shape == (21, 21)
    assert abs(float(k.sum()) - 1.0) < 1e-6
    outside = torch.ones(21, 21, dtype=torch.bool)
    outside[6:15, 6:15] = False
    assert float(k[outside].abs().max()) == 0.0


def test_gaussian_matches_the_definition_for_rotated_anisotropic_kernels():
    rng = np.random.default_rng(0)
    for _ in range(50):
        sx, sy = rng.uniform(0.2, 3.0, 2)
        theta = rng.uniform(-math.pi, math.pi)
        size = int(rng.choice([7, 11, 15, 21]))
        k = build_kernels([{"family": "aniso", "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}])[0]
        pad = (21 - size) // 2
        ref = np.pad(_reference_gaussian(size, sx, sy, theta), pad)
        np.testing.assert_allclose(k.numpy(), ref, atol=1e-7)


def test_gaussian_second_moments_recover_sigma():
    sx, sy, theta = 1.6, 0.8, 0.6
    k = build_kernels([{"family": "aniso", "size": 21, "sigma_x": sx, "sigma_y": sy, "theta": theta}])[0]
    mx, my, mxx, myy, mxy = _moments(k)
    assert abs(mx) < 1e-9 and abs(my) < 1e-9  # centred
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = r @ np.diag([sx**2, sy**2]) @ r.T
    # a discretely sampled Gaussian's variance is σ² to well under 1% for σ ≥ 0.8
    np.testing.assert_allclose([mxx, myy, mxy], [cov[0, 0], cov[1, 1], cov[0, 1]], rtol=1e-2, atol=2e-3)


def test_symmetries():
    iso = build_kernels([{"family": "iso", "size": 15, "sigma_x": 2.0, "sigma_y": 2.0, "theta": 0.0}])[0]
    assert torch.allclose(iso, iso.t(), atol=1e-9)
    assert torch.allclose(iso, iso.flip(0), atol=1e-9) and torch.allclose(iso, iso.flip(1), atol=1e-9)
    aniso = build_kernels([{"family": "aniso", "size": 15, "sigma_x": 2.5, "sigma_y": 0.5, "theta": 0.7}])[0]
    assert torch.allclose(aniso, aniso.flip(0).flip(1), atol=1e-9)  # point symmetric
    assert not torch.allclose(aniso, aniso.t(), atol=1e-4)  # but not isotropic


def test_generalized_with_beta_one_is_gaussian_and_plateau_follows_its_profile():
    p = {"size": 13, "sigma_x": 1.3, "sigma_y": 2.1, "theta": -0.3}
    g, gen, plat = build_kernels(
        [{"family": "aniso", **p}, {"family": "generalized_aniso", "beta": 1.0, **p}, {"family": "plateau_aniso", "beta": 2.0, **p}]
    )
    assert torch.allclose(g, gen, atol=1e-7)
    # plateau: k ∝ 1/(Q^β+1); its ratio to the Gaussian's Q recovers the profile
    q = -2 * torch.log(g[4:17, 4:17].double() / g[10, 10].double())
    expected = 1.0 / (q.pow(2.0) + 1.0)
    expected = expected / expected.sum()
    assert torch.allclose(plat[4:17, 4:17].double(), expected, atol=1e-6)


def test_sinc_matches_bessel_definition_and_cuts_off_at_omega():
    omega, size = 1.0, 21
    k = build_kernels([{"family": "sinc", "size": size, "omega": omega}])[0].double()
    ax = np.arange(size) - size // 2
    xx, yy = np.meshgrid(ax, ax)
    r = np.hypot(xx, yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = omega * special.j1(omega * r) / (2 * np.pi * r)
    ref[size // 2, size // 2] = omega**2 / (4 * np.pi)
    ref /= ref.sum()
    np.testing.assert_allclose(k.numpy(), ref, atol=1e-7)
    # frequency response: passes well below ω, stops well above ω (radial frequency in rad/px)
    resp = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(torch.nn.functional.pad(k, (54, 53, 54, 53))))).abs()
    n = resp.shape[0]
    f = torch.fft.fftshift(torch.fft.fftfreq(n, dtype=torch.float64)) * 2 * math.pi
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    rad = torch.sqrt(fx**2 + fy**2)
    assert float(resp[rad < 0.6 * omega].mean()) > 0.9
    assert float(resp[rad > 1.6 * omega].mean()) < 0.1


def test_delta_for_missing_blur_and_opencv_sigma():
    k = build_kernels([None])[0]
    assert float(k[10, 10]) == 1.0 and float(k.sum()) == 1.0
    assert opencv_default_sigma(51) == pytest.approx(8.0)
    g = gaussian_kernel1d(51, 8.0)
    assert abs(float(g.sum()) - 1) < 1e-6 and torch.allclose(g, g.flip(0))
