"""The diffusion discriminator can discriminate, and its gradient teaches the generator (issue 21).

Two mechanism checks on the tiny preset's networks, through the real DeepSpeed engines and the
trainer's own step functions:

1. ``discriminator_step`` alone, on real HR latents (the tiny generator's VAE encoding of crops
   of scikit-image's bundled photos) against an obviously different fake (the same latents
   blurred), at small t: held-out patch accuracy must rise well above chance within a bounded
   number of steps.
2. ``generator_step`` with only the adversarial term, against that trained discriminator held
   fixed: the generator moves, and D's logit for the generator's new output rises (the fake
   moves towards what D calls real); the gradient of g_adv with respect to a blurred latent puts
   back high-frequency energy, the real/fake difference D learned.

Both are run on a deliberately broken discriminator as well ("blind": its input latent is
multiplied by zero, so it sees only the diffusion noise, and its gradient w.r.t. the latent is
exactly zero): the same checks must then fail, which the parametrisation asserts. Mechanics
only: the perceptual backbone is random (asked for by name) and nothing here reports metrics.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pairforge.training.config import load_config
from pairforge.training.loop.losses import d_bucket_metrics, d_bucket_sums, g_adv_loss
from pairforge.training.model.networks import build_discriminator, build_generator
from pairforge.training.model.networks.discriminator import DiffusionDiscriminator

pytestmark = pytest.mark.timeout(300)

#: the discriminator sees t ~ U[0, T_SMALL] here: the noise stays below the blur's signal
T_SMALL = 20
#: discriminator steps (batch 8) allowed before its held-out accuracy must be well above chance
D_STEPS = 100
BATCH = 8
CROP = 32  # → 8×8 latents → a 4×4 grid of patch logits


def _cfg():
    return load_config(preset="tiny", overrides={
        "loss": {"perceptual_backbone": "random", "adv_start_step": 0, "mse": 0.0, "ea_dists": 0.0, "adv": 1.0},
        # the settings under which a random-init D learns (docs/training.md, "The diffusion
        # discriminator"); the tiny preset keeps D3SR's for its demo
        # D judges latents here (real vs blurred), unaugmented, so the preset's image view and
        # dihedral augmentation are off
        "discriminator": {"t_min": 0, "t_max": T_SMALL, "head_norm": "none", "latent_adapter": "rescale",
                          "augment": "none", "updates_per_step": 1},
        "optim_d": {"lr": 5.0e-4, "betas": [0.9, 0.999]},
        "data": {"batch_size": BATCH}})


def _hr_crops(n: int, seed: int) -> torch.Tensor:
    """``n`` CROP×CROP crops of the bundled photos (real image statistics, no download)."""
    from PIL import Image

    from pairforge.pipeline.sources import bundled_photos

    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255 for _, p in bundled_photos()[:6]]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - CROP), rng.integers(0, img.shape[1] - CROP)
        crops.append(torch.from_numpy(img[y:y + CROP, x:x + CROP]).permute(2, 0, 1))
    return torch.stack(crops)


def _blur(z: torch.Tensor) -> torch.Tensor:
    """The obviously different fake: a 3×3 box blur of the latent (edges replicated)."""
    return F.avg_pool2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3, 1)


def _break(d: DiffusionDiscriminator, variant: str) -> DiffusionDiscriminator:
    """``blind``: the latent D sees is multiplied by zero (graph kept, gradient exactly zero)."""
    if variant == "blind":
        d.to_disc_latent = lambda z, image01: DiffusionDiscriminator.to_disc_latent(d, z, image01) * 0
    return d


@torch.no_grad()
def _accuracy(d, z_real, z_fake, seed: int) -> dict[str, float]:
    """Held-out margin and patch accuracy at t ~ U[0, T_SMALL] (fixed t and noise)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T_SMALL + 1, (z_real.shape[0],), generator=g)
    real = d(z_real, t, torch.randn(z_real.shape, generator=g))
    fake = d(z_fake, t, torch.randn(z_fake.shape, generator=g))
    m = d_bucket_metrics(d_bucket_sums(real, fake, t))
    return {"acc": m["d_acc_t0_100"], "margin": m["d_margin_t0_100"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these networks are tiny, and on 2 loaded cores a second thread makes
    each step ~10× slower (measured), not faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def latents():
    """Real HR latents (train / held-out crops), as the trainer's discriminator receives them."""
    cfg = _cfg()
    g = build_generator(cfg.generator, seed=0).eval()
    with torch.no_grad():
        enc = {name: g(hr, hr)["z_real"] for name, hr in (("train", _hr_crops(64, 0)), ("held_out", _hr_crops(32, 1)))}
    return enc


@pytest.fixture(scope="module")
def trained(dist_env, latents):
    """Per variant: the discriminator engine after D_STEPS trainer ``discriminator_step`` calls on
    real vs blurred latents, with its held-out accuracy before and after."""
    from pairforge.training.loop.engines import build_engine
    from pairforge.training.loop.trainer import discriminator_step

    cfg = _cfg()
    out = {}
    for variant in ("ok", "blind"):
        d = _break(build_discriminator(cfg.discriminator, 1.0, seed=0), variant)
        engine_d = build_engine(d, cfg.engine, cfg.optim_d, BATCH)
        held = (latents["held_out"], _blur(latents["held_out"]))
        before = _accuracy(d, *held, seed=7)
        noise = torch.Generator().manual_seed(0)
        order = torch.Generator().manual_seed(1)
        z_train = latents["train"]
        for _ in range(D_STEPS):
            idx = torch.randint(0, z_train.shape[0], (BATCH,), generator=order)
            z = z_train[idx]
            fake = {"z_real": z, "z_fake": _blur(z), "sr": torch.zeros(BATCH, 3, CROP, CROP)}
            discriminator_step(engine_d, fake, fake["sr"], cfg, noise, "cpu")
        out[variant] = {"engine": engine_d, "before": before, "after": _accuracy(d, *held, seed=7)}
    return out


@pytest.mark.parametrize("variant,learns", [("ok", True), ("blind", False)])
def test_discriminator_learns_real_from_blurred_at_small_t(trained, variant, learns):
    r = trained[variant]
    print(f"{variant}: held-out accuracy {r['before']['acc']:.3f} → {r['after']['acc']:.3f}, "
          f"margin {r['before']['margin']:+.4f} → {r['after']['margin']:+.4f}")
    assert abs(r["before"]["acc"] - 0.5) < 0.1  # starts at chance
    # a blurred flat patch is its real self, so patch accuracy stays well below 1 even for a good D
    well_above_chance = r["after"]["acc"] > 0.58 and r["after"]["margin"] > 0.4
    assert well_above_chance == learns


@pytest.mark.parametrize("variant,teaches", [("ok", True), ("blind", False)])
def test_generator_adversarial_gradient_moves_fake_towards_real(dist_env, trained, latents, variant, teaches):
    from pairforge.training.loop.engines import build_engine, frozen
    from pairforge.training.loop.losses import GeneratorLoss
    from pairforge.training.loop.trainer import generator_step

    cfg = _cfg()
    engine_d = trained[variant]["engine"]
    d = engine_d.module

    # (1) the gradient of g_adv w.r.t. a blurred latent puts back high-frequency energy
    z_blur = _blur(latents["held_out"]).requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, T_SMALL + 1, (z_blur.shape[0],), generator=g)
    noise = torch.randn(z_blur.shape, generator=g)
    with frozen(d):
        grad, = torch.autograd.grad(g_adv_loss(d(z_blur, t, noise)), z_blur)
    step = z_blur.detach() - 0.05 * grad / grad.norm().clamp_min(1e-12) * z_blur.detach().norm()

    def hf(z):
        return (z - _blur(z)).pow(2).mean().item()

    with torch.no_grad():
        logit_before, logit_after = d(z_blur, t, noise).mean().item(), d(step, t, noise).mean().item()
    print(f"{variant}: |grad| {grad.norm():.3e}, fake logit {logit_before:+.4f} → {logit_after:+.4f}, "
          f"HF energy {hf(z_blur.detach()):.5f} → {hf(step):.5f} (real {hf(latents['held_out']):.5f})")
    assert (grad.norm() > 0 and logit_after > logit_before and hf(step) > hf(z_blur.detach())) == teaches

    # (2) one trainer generator step with only the adversarial term raises D's fake logit
    gen = build_generator(cfg.generator, seed=0)
    engine_g = build_engine(gen, cfg.engine, cfg.optim_g, BATCH)
    hr = _hr_crops(BATCH, 2)
    lr_up = F.interpolate(F.interpolate(hr, scale_factor=0.25, mode="area"), scale_factor=4,
                          mode="bicubic").clamp(0, 1)
    t = torch.randint(0, T_SMALL + 1, (BATCH,), generator=g)
    noise = torch.randn(BATCH, 4, CROP // 4, CROP // 4, generator=g)
    before_params = [p.detach().clone() for p in gen.parameters()]
    with torch.no_grad():
        fake_before = d(gen(lr_up)["z_fake"], t, noise).mean().item()
    loss_fn = GeneratorLoss(cfg.loss, {})
    _, _, parts = generator_step(engine_g, engine_d, loss_fn, lr_up, hr, cfg, torch.Generator().manual_seed(4), True,
                                 "cpu")
    moved = any(not torch.equal(a, p.detach()) for a, p in zip(before_params, gen.parameters()))
    with torch.no_grad():
        fake_after = d(gen(lr_up)["z_fake"], t, noise).mean().item()
    print(f"{variant}: g_adv {parts['g_adv']:.4f}, G moved {moved}, D(fake) {fake_before:+.4f} → {fake_after:+.4f}")
    assert (moved and fake_after > fake_before) == teaches


def test_bucket_metrics_margin_accuracy_and_empty_buckets():
    """Per-bucket means from summed parts (a micro-batch may miss a bucket), and the validation
    line's low-t words."""
    from pairforge.training.loop.trainer import low_t_words

    real = torch.tensor([[1.0, 3.0], [-1.0, 1.0], [2.0, 2.0]]).view(3, 1, 1, 2)
    fake = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]).view(3, 1, 1, 2)
    sums = d_bucket_sums(real, fake, torch.tensor([5, 99, 700]))
    assert sums["d_n_t100_300"] == 0 and sums["d_n_t0_100"] == 2  # every key present, even when empty
    m = d_bucket_metrics(sums)
    assert set(m) == {"d_margin_t0_100", "d_acc_t0_100", "d_margin_t600_1000", "d_acc_t600_1000"}
    assert m["d_margin_t0_100"] == pytest.approx(((2.0 - -1.0) + (0.0 - 1.0)) / 2)
    assert m["d_acc_t0_100"] == pytest.approx((1.0 + 0.25) / 2)  # sample 2: ½·(½ real > 0 + 0 fake < 0)
    assert m["d_acc_t600_1000"] == pytest.approx(0.5)  # a fake logit of exactly 0 is not "< 0"
    assert low_t_words(m) == "; D acc t<100 0.62 (margin +1.000)"
    assert low_t_words({}) == ""


@pytest.mark.parametrize("updates", [1, 3])
def test_discriminator_updates_per_step_is_the_d_to_g_ratio(dist_env, updates):
    """``discriminator.updates_per_step`` = k: one trainer step updates G once and D k times (the
    extra D updates reuse the step's fakes, so G runs once)."""
    from types import SimpleNamespace

    from pairforge.training.loop.engines import build_engine
    from pairforge.training.loop.losses import GeneratorLoss
    from pairforge.training.loop.trainer import train_on_batch

    cfg = load_config(preset="tiny", overrides={"loss": {"perceptual_backbone": "random", "ea_dists": 0.0},
                                                "discriminator": {"updates_per_step": updates}})
    gen = build_generator(cfg.generator, seed=0)
    engine_g = build_engine(gen, cfg.engine, cfg.optim_g, 2)
    engine_d = build_engine(build_discriminator(cfg.discriminator, gen.latent_scale, seed=1), cfg.engine,
                            cfg.optim_d, 2)
    calls = []
    engine_g.module.register_forward_hook(lambda *_: calls.append("G"))
    nets = SimpleNamespace(engine_g=engine_g, engine_d=engine_d, loss_fn=GeneratorLoss(cfg.loss, {}),
                           noise_gen=torch.Generator().manual_seed(0))
    hr = _hr_crops(2, 5)
    batch = {"hr": hr, "lr_up": F.interpolate(F.avg_pool2d(hr, 4), scale_factor=4, mode="bicubic").clamp(0, 1)}
    d_before = [p.detach().clone() for p in engine_d.module.parameters()]
    values = train_on_batch(SimpleNamespace(device="cpu", nets=nets, cfg=cfg), batch, use_adv=False)
    assert (engine_g.global_steps, engine_d.global_steps, calls) == (1, updates, ["G"])
    assert any(not torch.equal(a, p.detach()) for a, p in zip(d_before, engine_d.module.parameters()))
    assert np.isfinite(values["loss_d"])


def test_updates_per_step_below_one_is_refused_naming_the_field():
    from pairforge.training.config import ConfigError

    with pytest.raises(ConfigError, match="discriminator.updates_per_step"):
        load_config(preset="tiny", overrides={"discriminator": {"updates_per_step": 0}})
