"""Losses: MSE, GAN (non-saturating or hinge), and the total generator loss

    L_G = w_mse·MSE(x̂, x) + w_ea·EA-DISTS(x̂, x) + w_dists·DISTS + w_lpips·LPIPS + λ_adv·L_adv(D(ẑ))

EA-DISTS(x̂, x) = DISTS(x̂, x) + DISTS(S(x̂), S(x)), S = Sobel magnitude of the channel-mean
image (implemented in ``training.perceptual``). The perceptual networks are frozen and live
outside the DeepSpeed engines; they always run in float32 on images in [0, 1].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- GAN
def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """Discriminator loss on patch logits (mean over patches and batch)."""
    if kind == "nonsaturating":  # −log σ(D(real)) − log(1 − σ(D(fake)))
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


def g_adv_loss(fake_logits: torch.Tensor, kind: str = "nonsaturating") -> torch.Tensor:
    """Generator's adversarial loss."""
    if kind == "nonsaturating":  # −log σ(D(fake))
        return F.softplus(-fake_logits).mean()
    if kind == "hinge":
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss {kind!r}")


# --------------------------------------------------------------------------- D diagnostics
#: the diffusion-time buckets the discriminator is measured in, [lo, hi): at small t the real and
#: fake latents are nearly noise-free, at large t both are nearly pure noise and no D can tell them
#: apart, so one average over t would hide whether D learns where it can
D_T_BUCKETS: tuple[tuple[int, int], ...] = ((0, 100), (100, 300), (300, 600), (600, 1000))


def bucket_name(lo: int, hi: int) -> str:
    """``t0_100`` for [0, 100): the suffix of the metric keys ``d_margin_*`` / ``d_acc_*``."""
    return f"t{lo}_{hi}"


#: the bucket whose accuracy ``pairforge train`` prints with each validation line
LOW_T_BUCKET = bucket_name(*D_T_BUCKETS[0])


def d_bucket_sums(real_logits: torch.Tensor, fake_logits: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """Per-t-bucket sums of D's per-sample outputs, to be added over micro-batches and ranks and
    turned into means by :func:`d_bucket_metrics` (a micro-batch may hold no sample of a bucket, so
    means of means would be wrong).

    Per sample i (real and fake noised to the same t_i): the mean real patch logit, the mean fake
    patch logit, and the patch accuracy ½·(share of real patches > 0 + share of fake patches < 0).
    Keys ``d_n_<b>``, ``d_real_<b>``, ``d_fake_<b>``, ``d_hits_<b>`` for every bucket (zeros when
    empty), so every rank reports the same keys.
    """
    r = real_logits.detach().float().flatten(1)
    f = fake_logits.detach().float().flatten(1)
    acc = 0.5 * ((r > 0).float().mean(1) + (f < 0).float().mean(1))
    t = t.detach().to(r.device)
    out: dict[str, float] = {}
    for lo, hi in D_T_BUCKETS:
        m = (t >= lo) & (t < hi)
        b = bucket_name(lo, hi)
        out[f"d_n_{b}"] = float(m.sum())
        out[f"d_real_{b}"] = float(r.mean(1)[m].sum())
        out[f"d_fake_{b}"] = float(f.mean(1)[m].sum())
        out[f"d_hits_{b}"] = float(acc[m].sum())
    return out


def d_bucket_metrics(sums: dict[str, float]) -> dict[str, float]:
    """``d_margin_<b>`` (mean real logit − mean fake logit; > 0 when D ranks real above fake) and
    ``d_acc_<b>`` (patch accuracy; 0.5 is chance) for each bucket that saw samples."""
    out: dict[str, float] = {}
    for lo, hi in D_T_BUCKETS:
        b = bucket_name(lo, hi)
        n = sums.get(f"d_n_{b}", 0.0)
        if n > 0:
            out[f"d_margin_{b}"] = (sums[f"d_real_{b}"] - sums[f"d_fake_{b}"]) / n
            out[f"d_acc_{b}"] = sums[f"d_hits_{b}"] / n
    return out


def mse_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(sr.float(), hr.float())


# --------------------------------------------------------------------------- perceptual
def build_perceptual(loss_cfg, device: torch.device | str = "cpu", need: tuple[str, ...] | None = None) -> dict:
    """Build the frozen perceptual networks the config asks for: {"dists", "ea_dists", "lpips"}.

    Real ImageNet weights by default (PerceptualWeightsMissing when absent: run
    `pairforge weights`); ``perceptual_backbone: random`` only when asked for by name.
    """
    from pairforge.training.model.perceptual import DISTS, LPIPS, EdgeAwareDISTS

    need = need or tuple(n for n in ("dists", "ea_dists", "lpips") if getattr(loss_cfg, n) > 0)
    nets: dict[str, nn.Module] = {}
    kw = dict(weights_dir=loss_cfg.weights_dir, backbone=loss_cfg.perceptual_backbone)
    if "dists" in need or "ea_dists" in need:
        dists = DISTS(**kw).to(device).eval().requires_grad_(False)
        nets["dists"] = dists
        nets["ea_dists"] = EdgeAwareDISTS(dists).to(device).eval().requires_grad_(False)
    if "lpips" in need:
        nets["lpips"] = LPIPS(net=loss_cfg.lpips_net, **kw).to(device).eval().requires_grad_(False)
    return nets


def backbone_sources(nets: dict) -> dict[str, str]:
    return {k: str(getattr(v, "backbone_source", getattr(getattr(v, "dists", None), "backbone_source", "?")))
            for k, v in nets.items()}


class GeneratorLoss(nn.Module):
    """Total generator loss; returns (loss, {name: float}) for logging."""

    def __init__(self, loss_cfg, perceptual: dict):
        super().__init__()
        self.cfg = loss_cfg
        self.nets = nn.ModuleDict(perceptual)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, fake_logits: torch.Tensor | None,
                use_adv: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        sr32, hr32 = sr.float(), hr.float()
        parts: dict[str, torch.Tensor] = {}
        total = sr32.new_zeros(())
        if c.mse > 0:
            parts["mse"] = mse_loss(sr32, hr32)
            total = total + c.mse * parts["mse"]
        if c.ea_dists > 0:
            parts["ea_dists"] = self.nets["ea_dists"](sr32, hr32).mean()
            total = total + c.ea_dists * parts["ea_dists"]
        if c.dists > 0:
            parts["dists"] = self.nets["dists"](sr32, hr32).mean()
            total = total + c.dists * parts["dists"]
        if c.lpips > 0:
            parts["lpips"] = self.nets["lpips"](sr32, hr32).mean()
            total = total + c.lpips * parts["lpips"]
        if fake_logits is not None and c.adv > 0 and use_adv:
            parts["g_adv"] = g_adv_loss(fake_logits, c.gan)
            total = total + c.adv * parts["g_adv"]
        return total, {k: float(v.detach()) for k, v in parts.items()}
