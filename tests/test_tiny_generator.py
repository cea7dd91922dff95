"""The tiny preset's generator starts at its input: a resampler VAE and a zero ε̂.

The demo's model has a few hundred CPU steps to beat its own bicubic input; a random-init
VAE decodes noise and spends them learning to reconstruct. These tests pin what makes step 0
(nearly) the bicubic input: the VAE is a box-down / bilinear-up resampler, its convs pad by
replication (an export keeps that), and the one-step formula maps the LR latent to the same
decoder input as the real HR latent the discriminator sees.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pairforge.training.config import load_config
from pairforge.training.model.metrics import psnr_y
from pairforge.training.model.networks import backbones as bb
from pairforge.training.model.networks import build_generator

pytestmark = pytest.mark.timeout(120)


def _bicubic_photo_crop(side: int = 128) -> torch.Tensor:
    """A crop of a bundled photo, ×4 bicubic down then up: what the generator is fed."""
    import skimage

    img = torch.from_numpy(np.asarray(skimage.data.chelsea(), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    hr = img[..., 60:60 + side, 150:150 + side]
    lr = F.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True, align_corners=False)
    return F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)


def test_step0_is_the_vae_reconstruction_of_the_input_and_matches_real_latents():
    g = build_generator(load_config(preset="tiny").generator, seed=0).eval()
    x = _bicubic_photo_crop()
    with torch.no_grad():
        out = g(x, hr=x)
    # ε̂ = 0 at init: ẑ_H equals the latent the discriminator sees for the same image as "real"
    assert torch.allclose(out["z_fake"], out["z_real"], atol=1e-5)
    assert g.real_latent_gain > 1  # 1/√ᾱ at T_L
    # ... and decodes to (nearly) the input itself, borders included
    assert float(psnr_y(out["sr"], x).mean()) > 30.0


def test_resampler_encoder_is_a_box_average_and_the_decoder_keeps_flat_colour():
    vae = bb.init_tiny_vae_as_resampler(bb.tiny_vae()).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    flat = torch.full((1, 3, 32, 32), 0.3)
    flat[:, 1] = -0.5
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        rec_flat = vae.decode(vae.encode(flat).latent_dist.mode()).sample
    assert torch.allclose(z[:, :3], F.avg_pool2d(x, 4), atol=1e-2)
    assert torch.allclose(z[:, 3], torch.zeros_like(z[:, 3]))  # the spare channel starts empty
    inner = (..., slice(8, -8), slice(8, -8))  # zero padding shades the outer latent pixels
    assert torch.allclose(rec_flat[inner], flat[inner], atol=1e-2)


def test_replicate_padding_keeps_the_borders_of_a_flat_image():
    """Zero padding darkens the outer pixels (a 64 px crop loses PSNR there); the tiny preset pads
    by replication, so step 0 keeps a flat colour flat up to the very edge."""
    cfg = load_config(preset="tiny").generator
    assert cfg.padding_mode == "replicate"
    flat = torch.full((1, 3, 64, 64), 0.6)
    flat[:, 1] = 0.25
    with torch.no_grad():
        sr = build_generator(cfg, seed=0).eval()(flat)["sr"]
        zero = build_generator(load_config(preset="tiny", overrides={"generator": {"padding_mode": "zeros"}}).generator,
                               seed=0).eval()(flat)["sr"]
    assert float((sr - flat).abs().max()) < 1e-2
    edge = (..., slice(0, 2), slice(None))
    assert float((zero - flat)[edge].abs().max()) > 0.05  # what replication avoids


def test_export_records_the_padding_mode_and_loads_it_back(tmp_path):
    import json

    from pairforge.training.model.networks.generator import OneStepGenerator

    g = build_generator(load_config(preset="tiny").generator, seed=3).eval()
    with torch.no_grad():  # a UNet that does something, so its own padding shows too
        g.unet.conv_out.weight.normal_(0, 0.05)
    g.export(tmp_path / "export", base="tiny(seed=3)", lora_on_base=False)
    assert json.loads((tmp_path / "export" / "pairforge_generator.json").read_text())["padding_mode"] == "replicate"
    g2 = OneStepGenerator.from_export(tmp_path / "export")
    padded = [m for m in g2.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)]
    assert padded and all(m.padding_mode == "replicate" for m in padded)
    x = _bicubic_photo_crop(64)
    with torch.no_grad():
        assert torch.allclose(g2(x)["sr"], g(x)["sr"], atol=1e-5)
    meta = json.loads((tmp_path / "export" / "pairforge_generator.json").read_text())
    del meta["padding_mode"]  # an export written before padding_mode existed loads as zeros
    (tmp_path / "export" / "pairforge_generator.json").write_text(json.dumps(meta))
    old = OneStepGenerator.from_export(tmp_path / "export")
    assert all(m.padding_mode == "zeros" for m in old.modules() if isinstance(m, torch.nn.Conv2d))


def test_the_tiny_vae_stays_frozen_and_the_zero_output_conv_still_learns():
    """As in D3SR the VAE is frozen (training the resampler lowered held-out PSNR-Y); the UNet,
    its zero output conv included, trains. A config may still train the VAE from the resampler."""
    g = build_generator(load_config(preset="tiny").generator, seed=0)
    assert not any(p.requires_grad for p in g.vae.parameters())
    x = _bicubic_photo_crop(32)
    g(x)["sr"].mean().backward()
    assert g.unet.conv_out.weight.grad.abs().sum() > 0
    g = build_generator(load_config(preset="tiny", overrides={"generator": {"train_vae": True}}).generator, seed=0)
    g(x)["sr"].mean().backward()
    assert g.vae.decoder.conv_out.weight.grad.abs().sum() > 0
