"""Generator / discriminator / losses / engines, on the tiny random-init configs.

Trainer-mechanics tests: the perceptual loss uses ``perceptual_backbone: random`` (asked for
by name) so they do not depend on prepared ImageNet weights; nothing here reports metrics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pairforge.training.config import load_config
from pairforge.training.loop.losses import d_loss, g_adv_loss
from pairforge.training.model.networks import build_discriminator, build_generator
from pairforge.training.model.networks.backbones import SD21_LATENT_SCALE, SDXL_LATENT_SCALE, default_scheduler

pytestmark = pytest.mark.timeout(180)


def _cfg(**ov):
    base = {"loss": {"perceptual_backbone": "random", "adv_start_step": 0}}
    for k, v in ov.items():
        base.setdefault(k, {}).update(v)
    return load_config(preset="tiny", overrides=base)


def test_one_step_x0_matches_ddpm_scheduler():
    cfg = _cfg()
    g = build_generator(cfg.generator).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = g(x)
        z = g.vae.encode(x * 2 - 1).latent_dist.mode() * g.latent_scale
        t = torch.full((2,), cfg.generator.timestep)
        eps = g.unet(z, t, encoder_hidden_states=g.prompt_embeds.expand(2, -1, -1)).sample
        sched = default_scheduler()
        ref = sched.step(eps, cfg.generator.timestep, z).pred_original_sample
    assert torch.allclose(out["z_fake"], ref, atol=1e-5)
    assert out["sr"].shape == x.shape and 0 <= out["sr"].min() and out["sr"].max() <= 1


def test_lora_only_on_unet_and_trainable_parts():
    cfg = load_config(preset="tiny", overrides={"generator": {"train_unet": False, "train_vae": False}})
    g = build_generator(cfg.generator)
    trainable = [n for n, p in g.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("unet.") and "lora_" in n or n == "prompt_embeds" for n in trainable)
    assert not any(p.requires_grad for p in g.vae.parameters())


def test_discriminator_sdxl_like_conditions_and_latent_scale():
    cfg = _cfg(discriminator={"arch": "tiny-sdxl", "train_backbone": False, "latent_adapter": "rescale"})
    d = build_discriminator(cfg.discriminator, gen_latent_scale=SD21_LATENT_SCALE)
    assert d.sdxl and d.prompt_embeds.shape[-1] == 48 and d.pooled_embeds.shape == (1, 48)
    z = torch.randn(2, 4, 8, 8)
    assert torch.allclose(d.to_disc_latent(z, None), z * SDXL_LATENT_SCALE / SD21_LATENT_SCALE)
    logits = d(z, torch.tensor([10, 900]), torch.randn_like(z))
    assert logits.shape == (2, 1, 4, 4)
    # only LoRA (down+mid) and the head train; no up blocks are kept
    names = [n for n, p in d.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)
    assert not hasattr(d, "up_blocks")


def test_gan_losses_match_definitions():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    ns_d = (-torch.log(sig(real))).mean() + (-torch.log(1 - sig(fake))).mean()
    assert torch.allclose(d_loss(real, fake, "nonsaturating"), ns_d)
    assert torch.allclose(g_adv_loss(fake, "nonsaturating"), (-torch.log(sig(fake))).mean())
    assert torch.allclose(d_loss(real, fake, "hinge"), F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    assert torch.allclose(g_adv_loss(fake, "hinge"), -fake.mean())


def _snapshot(m):
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def _changed(before, m):
    return [n for n, p in m.named_parameters() if not torch.equal(before[n], p.detach())]


@pytest.mark.parametrize("stage", [2, 1])
def test_g_step_leaves_d_unchanged_and_vice_versa(dist_env, stage):
    from pairforge.training.loop.engines import build_engines
    from pairforge.training.loop.losses import GeneratorLoss, build_perceptual
    from pairforge.training.loop.trainer import discriminator_step, generator_step

    cfg = _cfg(engine={"zero_stage": stage}, data={"batch_size": 2})
    g = build_generator(cfg.generator, seed=0)
    d = build_discriminator(cfg.discriminator, g.latent_scale, seed=0)
    eg, ed = build_engines(g, d, cfg)
    loss_fn = GeneratorLoss(cfg.loss, build_perceptual(cfg.loss))
    noise = torch.Generator().manual_seed(0)
    hr, lr_up = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)

    d0, g0 = _snapshot(ed.module), _snapshot(eg.module)
    out, loss_g, parts = generator_step(eg, ed, loss_fn, lr_up, hr, cfg, noise, True, "cpu")
    assert "g_adv" in parts and "ea_dists" in parts  # the adversarial term went through D
    assert _changed(d0, ed.module) == []           # D untouched by the G step
    assert _changed(g0, eg.module)                  # G did move
    assert all(p.requires_grad for n, p in ed.module.named_parameters() if "lora_" in n)  # unfrozen again

    d1, g1 = _snapshot(ed.module), _snapshot(eg.module)
    discriminator_step(ed, out, hr, cfg, noise, "cpu")
    assert _changed(g1, eg.module) == []           # G untouched by the D step
    assert _changed(d1, ed.module)                  # D did move


def test_export_loads_back_with_diffusers_and_peft(tmp_path):
    from diffusers import UNet2DConditionModel

    from pairforge.training.model.networks.generator import OneStepGenerator

    cfg = load_config(preset="tiny", overrides={"generator": {"train_unet": False, "train_vae": False}})
    g = build_generator(cfg.generator, seed=5).eval()
    with torch.no_grad():  # make the LoRA non-trivial (B starts at zero)
        for n, p in g.unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    meta = g.export(tmp_path / "export", base="tiny(seed=5)", lora_on_base=True)
    for f in ("lora/pytorch_lora_weights.safetensors", "unet/diffusion_pytorch_model.safetensors",
              "unet/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
              "prompt_embeds.safetensors", "pairforge_generator.json"):
        assert (tmp_path / "export" / f).exists(), f
    assert meta["lora_applies_to_base"]

    x = torch.randn(1, 4, 16, 16)
    t = torch.tensor([cfg.generator.timestep])
    c = g.prompt_embeds.expand(1, -1, -1)
    with torch.no_grad():
        ref = g.unet(x, t, encoder_hidden_states=c).sample
        merged = UNet2DConditionModel.from_pretrained(tmp_path / "export" / "unet")
        assert torch.allclose(merged(x, t, encoder_hidden_states=c).sample, ref, atol=1e-4)
        base = build_generator(load_config(preset="tiny", overrides={"generator": {
            "train_lora": False, "train_unet": True, "train_vae": False}}).generator, seed=5).unet
        from diffusers import StableDiffusionPipeline

        sd, alphas = StableDiffusionPipeline.lora_state_dict(str(tmp_path / "export" / "lora"))
        base.load_lora_adapter(sd, prefix="unet", network_alphas=alphas)
        assert torch.allclose(base(x, t, encoder_hidden_states=c).sample, ref, atol=1e-4)
        g2 = OneStepGenerator.from_export(tmp_path / "export")
        lr = torch.rand(1, 3, 32, 32)
        assert torch.allclose(g2(lr)["sr"], g(lr)["sr"], atol=1e-4)


def test_tiled_inference_matches_whole_image_and_blends_tiles():
    import torch.nn.functional as F

    from pairforge.training.model.inference import upscale_tensor

    g = build_generator(load_config(preset="tiny").generator, seed=1).eval()
    lr = torch.rand(1, 3, 12, 20)
    whole = upscale_tensor(g, lr, scale=4, tile=256, overlap=16)
    with torch.no_grad():
        ref = g(F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1))["sr"]
    assert whole.shape == (1, 3, 48, 80) and torch.allclose(whole, ref, atol=1e-5)
    tiled = upscale_tensor(g, lr, scale=4, tile=32, overlap=8)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert float((tiled - whole).abs().mean()) < 0.2  # same image, only tile-context differences


def test_pretrained_presets_load_local_diffusers_folders(tmp_path):
    """The d3sr-sd21 / d3sr-sdxl code paths on small stand-in folders in diffusers layout."""
    from pairforge.training.model.networks import backbones as bb

    sd, xl = tmp_path / "sd21", tmp_path / "sdxl"
    bb.tiny_vae().save_pretrained(sd / "vae")
    bb.tiny_unet().save_pretrained(sd / "unet")
    bb.default_scheduler().save_pretrained(sd / "scheduler")
    bb.tiny_unet(cross_attention_dim=48, sdxl_like=True).save_pretrained(xl / "unet")
    xl_vae = bb.tiny_vae()  # the preset re-encodes with SDXL's VAE, whose latents scale by 0.13025
    xl_vae.register_to_config(scaling_factor=SDXL_LATENT_SCALE)
    xl_vae.save_pretrained(xl / "vae")
    cfg = load_config(preset="d3sr-sdxl", overrides={
        "generator": {"pretrained_path": str(sd), "text_embedding": "zeros"},
        "discriminator": {"pretrained_path": str(xl)}})
    assert cfg.discriminator.latent_adapter == "reencode"
    g = build_generator(cfg.generator)
    assert [n for n, p in g.named_parameters() if p.requires_grad and not ("lora_" in n or n == "prompt_embeds")] == []
    assert g.prompt_embeds.shape == (1, 77, 32)
    d = build_discriminator(cfg.discriminator, g.latent_scale)
    assert d.sdxl and d.disc_latent_scale == SDXL_LATENT_SCALE and d.gen_latent_scale == g.latent_scale
    x = torch.rand(1, 3, 32, 32)
    out = g(x, hr=x)
    logits = d(out["z_fake"], torch.tensor([500]), torch.randn_like(out["z_fake"]), image01=out["sr"])
    assert logits.shape[:2] == (1, 1)
    rescale = build_discriminator(load_config(preset="d3sr-sdxl", overrides={
        "discriminator": {"pretrained_path": str(xl), "latent_adapter": "rescale"}}).discriminator, g.latent_scale)
    assert rescale(out["z_fake"], torch.tensor([500]), torch.randn_like(out["z_fake"])).shape[:2] == (1, 1)



def test_a_pretrained_discriminator_holds_only_the_blocks_it_uses(tmp_path):
    """D keeps the UNet's input, time/added embeddings, down and mid blocks; none of the up blocks
    or output layers stay referenced (SD2.1-base: 352 M of 866 M parameters; SDXL: ≈ 1.24 B of
    2.57 B). diffusers memory-maps the safetensors file, so the unused blocks are never paged in
    (measured on a random SD2.1-base folder: peak RSS 0.87 GB for the load)."""
    import gc
    import weakref

    from pairforge.training.model.networks import backbones as bb

    full = bb.tiny_unet(cross_attention_dim=48, sdxl_like=True)
    full.save_pretrained(tmp_path / "unet")
    bb.default_scheduler().save_pretrained(tmp_path / "scheduler")
    cfg = load_config(preset="d3sr-sdxl", overrides={"discriminator": {"pretrained_path": str(tmp_path),
                                                                        "latent_adapter": "rescale"}})
    loaded = []
    real_load = bb.load_unet

    def tracking_load(root):
        unet = real_load(root)
        loaded.append(weakref.ref(unet.up_blocks))
        return unet

    bb.load_unet = tracking_load
    try:
        d = build_discriminator(cfg.discriminator, SD21_LATENT_SCALE)
    finally:
        bb.load_unet = real_load
    gc.collect()
    assert loaded and loaded[0]() is None, "the UNet's up blocks are still referenced after D was built"
    encoder = {"conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block"}
    want = sum(p.numel() for n, p in full.named_parameters() if n.split(".")[0] in encoder)
    held = sum(p.numel() for n, p in d.named_parameters() if "lora_" not in n and not n.startswith("head."))
    assert held == want < sum(p.numel() for p in full.parameters())
