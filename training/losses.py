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


def mse_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(sr.float(), hr.float())


# --------------------------------------------------------------------------- perceptual
def build_perceptual(loss_cfg, device: torch.device | str = "cpu", need: tuple[str, ...] | None = None) -> dict:
    """Build the frozen perceptual networks the config asks for: {"dists", "ea_dists", "lpips"}.

    Real ImageNet weights by default (PerceptualWeightsMissing when absent: run
    `pairforge weights`); ``perceptual_backbone: random`` only when asked for by name.
    """
    from pairforge.training.perceptual import DISTS, LPIPS, EdgeAwareDISTS

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
