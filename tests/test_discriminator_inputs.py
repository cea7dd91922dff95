"""What the discriminator is shown: the tiny presets' lossless image view and the augmentation
against a small dataset's memorisation (training/loop/d_augment.py).

Why these exist: with the tiny box-filter VAE, real and generated latents differ by almost
nothing (the filter drops the detail they differ in), and D memorised the demo's 32 HR patches.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairforge.training.config import ConfigError, load_config
from pairforge.training.loop.d_augment import apply_symmetries, augment, draw_symmetries
from pairforge.training.model.networks import build_discriminator, build_generator

pytestmark = pytest.mark.timeout(180)


def _cfg(**d):
    return load_config(preset="tiny", overrides={"loss": {"perceptual_backbone": "random", "adv_start_step": 0},
                                                   "discriminator": d})


def test_unshuffle_is_a_lossless_view_of_the_image_and_sees_blur():
    cfg = _cfg(latent_adapter="unshuffle")
    g = build_generator(cfg.generator)
    d = build_discriminator(cfg.discriminator, g.latent_scale)
    from skimage import data

    photo = torch.from_numpy(data.astronaut()[100:164:2, 180:244:2].copy()).permute(2, 0, 1).float() / 255
    img = torch.stack([photo, photo.flip(-1)])
    z = d.to_disc_latent(None, img)
    assert z.shape == d.latent_shape(torch.zeros(2, 4, 8, 8), img) == (2, 48, 8, 8)
    assert torch.equal(F.pixel_shuffle(z, 4), img * 2 - 1)  # nothing is lost
    blurred = F.avg_pool2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    # the generator's latent barely tells the blurred image from the sharp one; D's view does
    with torch.no_grad():
        zg_sharp, zg_blur = g._encode(img), g._encode(blurred)
    gen_gap = (zg_sharp - zg_blur).abs().mean() / zg_sharp.abs().mean()
    view_gap = (z - d.to_disc_latent(None, blurred)).abs().mean() / z.abs().mean()
    assert view_gap > 3 * gen_gap, (float(view_gap), float(gen_gap))
    t = torch.tensor([5, 50])
    logits = d(None, t, torch.randn(d.latent_shape(None, img)), image01=img)
    assert logits.shape[:2] == (2, 1) and torch.isfinite(logits).all()


def test_unshuffle_is_refused_for_a_pretrained_discriminator():
    with pytest.raises(ConfigError, match="discriminator.latent_adapter"):
        load_config(preset="tiny", overrides={"discriminator": {"arch": "sdxl", "pretrained_path": "/nowhere",
                                                                 "latent_adapter": "unshuffle"}})


def test_dihedral_augment_gives_real_and_fake_the_same_symmetry():
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(64, 2, 6, 6)
    fake = real * 3 + 1
    image = F.interpolate(real, scale_factor=4, mode="nearest")
    a_real, a_fake, a_image = augment("dihedral", [real, fake, image], gen, "cpu")
    assert torch.allclose(a_fake, a_real * 3 + 1)                      # same symmetry per sample
    assert torch.allclose(F.avg_pool2d(a_image, 4), a_real)              # image and latent agree
    changed = [not torch.equal(a, b) for a, b in zip(a_real, real)]
    assert 0 < sum(changed) < 64                                        # identity is one of the 8
    codes = draw_symmetries(4000, True, torch.Generator().manual_seed(1), "cpu")
    assert set(codes.tolist()) == set(range(8))
    # non-square: only shape-keeping symmetries
    wide = torch.rand(16, 2, 4, 6)
    (out,) = augment("dihedral", [wide], torch.Generator().manual_seed(2), "cpu")
    assert out.shape == wide.shape
    # differentiable: the gradient reaches the un-augmented tensor
    x = torch.rand(3, 2, 5, 5, requires_grad=True)
    apply_symmetries(x, torch.tensor([3, 6, 7])).pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach())


def test_augment_none_draws_nothing_so_existing_runs_do_not_change():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 4, 8, 8)
    assert augment("none", [x, None], gen, "cpu")[0] is x
    assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=torch.Generator().manual_seed(0)))


def test_trainer_steps_with_the_lossless_view_and_augmentation(dist_env):
    from pairforge.training.loop.engines import build_engines
    from pairforge.training.loop.losses import GeneratorLoss, build_perceptual
    from pairforge.training.loop.trainer import discriminator_step, generator_step

    cfg = load_config(preset="tiny", overrides={
        "loss": {"perceptual_backbone": "random", "adv_start_step": 0},
        "discriminator": {"latent_adapter": "unshuffle", "augment": "dihedral", "head_norm": "none"},
        "data": {"batch_size": 2}})
    g = build_generator(cfg.generator, seed=0)
    d = build_discriminator(cfg.discriminator, g.latent_scale, seed=0)
    eg, ed = build_engines(g, d, cfg)
    loss_fn = GeneratorLoss(cfg.loss, build_perceptual(cfg.loss))
    noise = torch.Generator().manual_seed(0)
    hr, lr_up = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    before = {n: p.detach().clone() for n, p in ed.module.named_parameters() if n.startswith("conv_in")}
    out, _, parts = generator_step(eg, ed, loss_fn, lr_up, hr, cfg, noise, True, "cpu")
    assert "g_adv" in parts and torch.isfinite(torch.tensor(parts["g_adv"]))
    loss_d, real_logits, fake_logits, _ = discriminator_step(ed, out, hr, cfg, noise, "cpu")
    assert torch.isfinite(loss_d) and real_logits.shape == fake_logits.shape
    assert any(not torch.equal(before[n], p) for n, p in ed.module.named_parameters() if n in before)
