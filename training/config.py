"""Typed training configuration: YAML in, validated dataclasses out.

A config is a YAML mapping with the sections below. Every value is checked when the
file is loaded; an error names the offending field (``generator.lora_rank: expected
an integer >= 1, got -3``). Presets live in ``training/presets/<name>.yaml`` and a
user file may start from one with ``base: NAME`` and override only some fields. Loading,
coercion, errors and inheritance are :mod:`pairforge.config`'s, shared with the degradation
presets.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pairforge.config import BASE_KEY, ConfigError, Presets, deep_merge, fingerprint, from_plain, set_dotted

PRESET_DIR = Path(__file__).with_name("presets")
log = logging.getLogger(__name__)

#: top-level keys that older versions wrote into a run's ``config.yaml`` and that no longer
#: exist: dropped on load, with a warning, so that such a run can still be resumed (any other
#: unknown key is an error)
RETIRED_KEYS = {
    "debug_kill_at_step": "a test hook, now the PAIRFORGE_TEST_KILL_AT_STEP environment variable",
}

#: OSEDiff-style LoRA targets on the diffusers UNet (attention projections, feed-forward,
#: resnet convs, down/up-sampler convs, transformer proj in/out).
DEFAULT_UNET_LORA_TARGETS = [
    "to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
    "conv1", "conv2", "conv_shortcut", "conv",
]


@dataclass
class GeneratorConfig:
    #: "tiny" builds small random-init VAE/UNet configs; "pretrained" loads `pretrained_path`.
    arch: Literal["tiny", "pretrained"] = "tiny"
    #: local folder in diffusers layout (vae/, unet/, scheduler/ [, text_encoder/, tokenizer/])
    pretrained_path: Optional[str] = None
    #: what to download into pretrained_path when it is missing (shown in the error)
    hub_id: str = "stabilityai/stable-diffusion-2-1-base"
    timestep: int = 399
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_UNET_LORA_TARGETS))
    #: which parts train. D3SR: LoRA only. tiny (random init): the whole UNet and VAE too.
    train_lora: bool = True
    train_unet: bool = False
    train_vae: bool = False
    #: the fixed text embedding fed to cross-attention instead of a text encoder:
    #: "zeros", "empty-prompt" (computed once from pretrained_path/text_encoder), or a
    #: .safetensors file holding `prompt_embeds` (1, L, C)
    text_embedding: str = "zeros"
    learnable_text_embedding: bool = True
    gradient_checkpointing: bool = False
    #: how the generator's convolutions (VAE and UNet) pad their input: "zeros" (diffusers'
    #: default, what pretrained weights were trained with) or "replicate"/"reflect", which do not
    #: darken the outer pixels of small crops. Not in diffusers' saved configs: an export records
    #: it in pairforge_generator.json and re-applies it on load.
    padding_mode: Literal["zeros", "replicate", "reflect"] = "zeros"


@dataclass
class DiscriminatorConfig:
    #: "tiny" / "tiny-sdxl" (random-init small UNet; the latter with SDXL-style added
    #: conditions), or "sd21" / "sdxl" loaded from pretrained_path
    arch: Literal["tiny", "tiny-sdxl", "sd21", "sdxl"] = "tiny"
    pretrained_path: Optional[str] = None
    hub_id: str = "stabilityai/stable-diffusion-xl-base-1.0"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_UNET_LORA_TARGETS))
    train_lora: bool = True
    #: train every backbone weight (random-init tiny discriminators)
    train_backbone: bool = False
    head_hidden: int = 256
    #: what the MLP patch head does first with the mid-block features: "groupnorm" (GroupNorm +
    #: SiLU, as a UNet's output) or "none" (keeps each sample's feature scale, which a random-init
    #: discriminator needs to see blur; see models/discriminator.PatchHead)
    head_norm: Literal["groupnorm", "none"] = "groupnorm"
    #: range of the shared diffusion time t ~ U[t_min, t_max] for real and fake latents
    t_min: int = 0
    t_max: int = 999
    #: discriminator updates per training step (D:G ratio; D3SR does not say). Each extra update
    #: reuses the step's detached real and fake latents with a fresh t and noise, so it costs
    #: D's forward/backward only, not another generator pass.
    updates_per_step: int = 1
    #: what D's inputs go through first, in D's step and in G's adversarial term: "none" or
    #: "dihedral" (the same random flip/90° rotation for a sample's real and fake latent; against
    #: a small dataset's memorisation, see training/loop/d_augment.py)
    augment: Literal["none", "dihedral"] = "none"
    #: how generator latents enter a discriminator trained on another VAE's latent space:
    #: "rescale" = z / s_gen * s_disc (explicit scaling-factor change, 0.18215 → 0.13025),
    #: "reencode" = encode the generated/real image with the discriminator's own VAE.
    #: "unshuffle" (tiny presets only) = a lossless space-to-depth view of the image, for a
    #: generator latent that does not keep the detail D must judge (the tiny box-filter VAE).
    latent_adapter: Literal["rescale", "reencode", "unshuffle"] = "rescale"
    #: fixed conditioning for the UNet's cross-attention (and SDXL's pooled embedding):
    #: "zeros", "empty-prompt" (encoded once from pretrained_path's text encoder(s)) or a
    #: .safetensors file with `prompt_embeds` (+ `pooled_prompt_embeds` for SDXL)
    text_embedding: str = "zeros"
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    mse: float = 1.0
    ea_dists: float = 1.0
    dists: float = 0.0
    lpips: float = 0.0
    lpips_net: Literal["alex", "vgg"] = "vgg"
    adv: float = 0.5
    gan: Literal["nonsaturating", "hinge"] = "nonsaturating"
    #: "imagenet" = real weights (from $PAIRFORGE_WEIGHTS / weights_dir, see `pairforge weights`);
    #: "random" only when asked for by name; reports then say so
    perceptual_backbone: Literal["imagenet", "random"] = "imagenet"
    weights_dir: Optional[str] = None
    #: steps before the adversarial term switches on (the G loss uses only MSE/perceptual)
    adv_start_step: int = 0


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-2
    eps: float = 1e-8
    grad_clip: float = 1.0


@dataclass
class EngineConfig:
    zero_stage: int = 2
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1
    #: optional DeepSpeed JSON files merged over the generated engine configs
    deepspeed_g: Optional[str] = None
    deepspeed_d: Optional[str] = None


@dataclass
class DataConfig:
    batch_size: int = 4
    num_workers: int = 2
    #: random HR crop side (aligned to the scale) or null to use the stored patch size
    crop_size: Optional[int] = None
    #: samples shuffled inside consecutive windows of this size (deterministic, resumable)
    shuffle_window: int = 64
    #: the last `val_shards` shards are held out for validation (training never reads them)
    val_shards: int = 1
    val_samples: int = 16
    #: a separate dataset URL for validation; then no training shard is held out
    val_data: Optional[str] = None
    prefetch_factor: int = 2


@dataclass
class LogConfig:
    log_every: int = 10
    val_every: int = 200
    ckpt_every: int = 500
    image_every: int = 200
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass
class TrainConfig:
    #: what this config is called (a preset's own name; informational)
    name: Optional[str] = None
    seed: int = 0
    steps: int = 1000
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim_g: OptimConfig = field(default_factory=OptimConfig)
    optim_d: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)

    # ----------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_yaml())

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form (the same definition as a degradation config's)."""
        return fingerprint(self)


# --------------------------------------------------------------------------- validation
def _check(cond: bool, where: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{where}: {msg}, got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and cross-field checks (types were checked while parsing)."""
    _check(cfg.steps >= 1, "steps", "expected an integer >= 1", cfg.steps)
    g, d, lo, e, da, lg = cfg.generator, cfg.discriminator, cfg.loss, cfg.engine, cfg.data, cfg.log
    _check(0 <= g.timestep <= 999, "generator.timestep", "expected 0 <= T_L <= 999", g.timestep)
    for sec, c in (("generator", g), ("discriminator", d)):
        _check(c.lora_rank >= 1, f"{sec}.lora_rank", "expected an integer >= 1", c.lora_rank)
        _check(c.lora_alpha > 0, f"{sec}.lora_alpha", "expected a number > 0", c.lora_alpha)
        _check(len(c.lora_targets) > 0, f"{sec}.lora_targets", "expected a non-empty list", c.lora_targets)
    _check(g.arch == "tiny" or g.pretrained_path, "generator.pretrained_path",
           "required when generator.arch is 'pretrained'", g.pretrained_path)
    _check(d.arch.startswith("tiny") or d.pretrained_path, "discriminator.pretrained_path",
           f"required when discriminator.arch is {d.arch!r}", d.pretrained_path)
    _check(g.train_lora or g.train_unet or g.train_vae or g.learnable_text_embedding,
           "generator.train_lora", "nothing in the generator would train", g.train_lora)
    _check(d.train_lora or d.train_backbone, "discriminator.train_lora",
           "nothing in the discriminator would train", d.train_lora)
    _check(d.head_hidden >= 1, "discriminator.head_hidden", "expected an integer >= 1", d.head_hidden)
    _check(d.latent_adapter != "unshuffle" or d.arch in ("tiny", "tiny-sdxl"), "discriminator.latent_adapter",
           "'unshuffle' needs a random-init tiny discriminator (a pretrained UNet's conv_in reads 4 latent channels)",
           d.latent_adapter)
    _check(d.updates_per_step >= 1, "discriminator.updates_per_step", "expected an integer >= 1",
           d.updates_per_step)
    _check(0 <= d.t_min <= d.t_max <= 999, "discriminator.t_max", "expected 0 <= t_min <= t_max <= 999",
           (d.t_min, d.t_max))
    for name in ("mse", "ea_dists", "dists", "lpips", "adv"):
        v = getattr(lo, name)
        _check(v >= 0, f"loss.{name}", "expected a weight >= 0", v)
    _check(lo.adv_start_step >= 0, "loss.adv_start_step", "expected an integer >= 0", lo.adv_start_step)
    for sec, o in (("optim_g", cfg.optim_g), ("optim_d", cfg.optim_d)):
        _check(o.lr > 0, f"{sec}.lr", "expected a learning rate > 0", o.lr)
        _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"{sec}.betas",
               "expected two numbers in [0, 1)", o.betas)
        _check(o.weight_decay >= 0, f"{sec}.weight_decay", "expected a number >= 0", o.weight_decay)
        _check(o.grad_clip >= 0, f"{sec}.grad_clip", "expected a number >= 0 (0 = off)", o.grad_clip)
        _check(o.eps > 0, f"{sec}.eps", "expected a number > 0", o.eps)
    _check(e.zero_stage in (0, 1, 2, 3), "engine.zero_stage", "expected 0, 1, 2 or 3", e.zero_stage)
    _check(e.grad_accum >= 1, "engine.grad_accum", "expected an integer >= 1", e.grad_accum)
    _check(da.batch_size >= 1, "data.batch_size", "expected an integer >= 1", da.batch_size)
    _check(da.num_workers >= 0, "data.num_workers", "expected an integer >= 0", da.num_workers)
    _check(da.crop_size is None or da.crop_size >= 8, "data.crop_size", "expected null or an integer >= 8",
           da.crop_size)
    _check(da.shuffle_window >= 1, "data.shuffle_window", "expected an integer >= 1", da.shuffle_window)
    _check(da.val_shards >= 0, "data.val_shards", "expected an integer >= 0", da.val_shards)
    _check(da.val_samples >= 1, "data.val_samples", "expected an integer >= 1", da.val_samples)
    _check(da.prefetch_factor >= 1, "data.prefetch_factor", "expected an integer >= 1", da.prefetch_factor)
    for name in ("log_every", "val_every", "ckpt_every", "image_every"):
        v = getattr(lg, name)
        _check(v >= 0, f"log.{name}", "expected an integer >= 0 (0 = off)", v)
    _check(lg.log_every >= 1, "log.log_every", "expected an integer >= 1", lg.log_every)
    _check(lg.keep_checkpoints >= 1, "log.keep_checkpoints", "expected an integer >= 1", lg.keep_checkpoints)
    return cfg


# --------------------------------------------------------------------------- loading
_PRESETS = Presets(PRESET_DIR, "training preset")


def available_presets() -> list[str]:
    """Names of the bundled training presets (the YAML files in ``training/presets``)."""
    return _PRESETS.names()


def _drop_retired(data: dict) -> dict:
    """``data`` without the :data:`RETIRED_KEYS`, each one it held named in a warning."""
    for key in RETIRED_KEYS.keys() & data.keys():
        log.warning("config: ignoring retired key %s: %r (%s)", key, data.pop(key), RETIRED_KEYS[key])
    return data


def from_dict(data: dict, overrides: dict | None = None) -> TrainConfig:
    """A validated config from plain data: its ``base:`` preset first, then ``data``, then
    the nested ``overrides``."""
    merged = _drop_retired(_PRESETS.expand(data or {}))
    if overrides:
        merged = deep_merge(merged, overrides)
    return validate(from_plain(TrainConfig, merged))


def load_config(path_or_preset: str | os.PathLike | None = None, overrides: dict | None = None,
                preset: str | None = None) -> TrainConfig:
    """Load a bundled preset by name or a YAML file by path, then apply nested ``overrides``."""
    name = preset if preset is not None else path_or_preset
    if name is None:
        raise ConfigError(f"{BASE_KEY}: give a YAML config file or one of {available_presets()}")
    return from_dict(_PRESETS.load(name), overrides)


__all__ = ["TrainConfig", "ConfigError", "from_dict", "load_config", "available_presets", "set_dotted", "validate"]
