"""The CPU Poisson sampler (alias tables): exact distribution, fixed RNG use, chunk-independence."""
import math

import pytest
import torch
from scipy import stats

from pairforge.degradations import poisson


@pytest.mark.parametrize("vals, level", [(256, 255), (256, 128), (256, 3), (64, 200), (8, 77), (1, 255), (2, 1)])
def test_draws_follow_the_poisson_pmf(vals: int, level: int) -> None:
    """Chi-square against the exact pmf (tails pooled to ≥ 20 expected), fixed seed."""
    n = 200_000
    lam = level * vals / 255
    gen = torch.Generator().manual_seed(1000 * vals + level)
    draws = poisson.poisson_of_levels(torch.full((n,), level), vals, gen)
    assert draws.dtype == torch.float32 and torch.equal(draws, draws.round()) and draws.min() >= 0
    counts = torch.bincount(draws.to(torch.int64)).double()
    kmax = max(int(lam + 12 * math.sqrt(lam) + 12), counts.numel())
    counts = torch.cat([counts, counts.new_zeros(kmax + 1 - counts.numel())])
    expected = torch.from_numpy(stats.poisson.pmf(range(kmax + 1), lam)) * n
    # pool cells from both ends until every pooled cell expects at least 20 draws
    obs, exp, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(counts.tolist(), expected.tolist()):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            obs.append(acc_o)
            exp.append(acc_e)
            acc_o = acc_e = 0.0
    obs[-1] += acc_o + (n - sum(counts.tolist()))
    exp[-1] += acc_e + (n - sum(expected.tolist()))
    if len(obs) == 1:  # λ so small that one cell holds everything: compare the zero count
        assert abs(draws.mean().item() - lam) < 5 * math.sqrt(lam / n) + 1e-9
        return
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    p = stats.chi2.sf(chi2, len(obs) - 1)
    assert p > 1e-4, (chi2, len(obs), p)
    assert abs(draws.double().mean().item() - lam) < 5 * math.sqrt(max(lam, 1e-9) / n)


def test_one_uniform_per_pixel_and_chunking_does_not_matter(monkeypatch) -> None:
    levels = torch.randint(0, 256, (3, 70, 90), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(42)
    first = poisson.poisson_of_levels(levels, 256, gen)
    after = gen.get_state()
    reference = torch.Generator().manual_seed(42)
    torch.rand(levels.numel(), generator=reference, dtype=torch.float64)
    assert torch.equal(after, reference.get_state())
    monkeypatch.setattr(poisson, "_CHUNK", 1000)
    again = poisson.poisson_of_levels(levels, 256, torch.Generator().manual_seed(42))
    assert torch.equal(first, again) and first.shape == levels.shape


def test_alias_tables_are_valid_distributions() -> None:
    threshold, alias, cells = poisson.alias_tables(16)
    assert threshold.shape == alias.shape == (256 * cells,)
    assert threshold.min() >= 0 and threshold.max() <= 1
    assert alias.min() >= 0 and alias.max() < cells
    # reconstruct the pmf of level 255 (λ = 16) from the tables
    t = threshold.view(256, cells)[255]
    a = alias.view(256, cells)[255]
    pmf = t / cells
    pmf = pmf.index_add(0, a, (1 - t) / cells)
    want = torch.from_numpy(stats.poisson.pmf(range(cells), 16.0))
    assert torch.allclose(pmf, want, atol=1e-12)
    with pytest.raises(ValueError, match="vals"):
        poisson.alias_tables(0)


@pytest.mark.parametrize("vals, level", [(256, 255), (256, 40), (4, 200)])
def test_stratified_uniforms_reproduce_the_pmf_cell_by_cell(vals: int, level: int) -> None:
    """Feeding an even grid of uniforms, the share of each count must be its pmf to within
    the grid's resolution: a fault in the alias logic that moves even 1e-5 shows here."""
    m = 1 << 20
    uniform = (torch.arange(m, dtype=torch.float64) + 0.5) / m
    draws = poisson.inverse_alias(torch.full((m,), level), uniform, vals)
    share = torch.bincount(draws.to(torch.int64)).double() / m
    lam = level * vals / 255
    want = torch.from_numpy(stats.poisson.pmf(range(share.numel()), lam))
    _, alias, cells = poisson.alias_tables(vals)
    aliased_into = torch.bincount(alias.view(256, cells)[level], minlength=share.numel())[: share.numel()]
    tolerance = (aliased_into.double() + 2) / m  # each contributing cell may be off by one grid step
    assert ((share - want).abs() <= tolerance).all()
