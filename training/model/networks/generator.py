"""The one-step generator: LR → VAE encoder → one UNet call at T_L → x0 → VAE decoder.

    z_L = E(2·x_L↑ − 1) · s
    ε̂  = UNet(z_L, T_L, c)                       c: a fixed (learnable) prompt embedding
    ẑ_H = (z_L − √(1−ᾱ_{T_L}) · ε̂) / √ᾱ_{T_L}    ᾱ: DDPMScheduler.alphas_cumprod
    x̂_H = D(ẑ_H / s)                             clamped to [−1, 1], returned in [0, 1]

Only the UNet gets LoRA (peft); which parts train is set by GeneratorConfig.

The ``tiny`` generator starts from a VAE that is a near-lossless resampler (4×4 box down,
bilinear up: :func:`~.backbones.init_tiny_vae_as_resampler`) and at its input: the UNet's
output conv is zero (ε̂ = 0, so ẑ_H = z_L/√ᾱ) and the decoder's first conv absorbs the 1/√ᾱ,
so step 0 is the VAE's reconstruction of the bicubic input
(:func:`~.backbones.start_at_identity`). Real latents for the discriminator are put in the
decoder's space the same way: z_real = E(x_H)·s·g with g = 1/√ᾱ (g = 1 for pretrained VAEs).
Its convolutions pad by replication (``generator.padding_mode``); diffusers' configs do not save
that, so an export records it in ``pairforge_generator.json`` and ``from_export`` re-applies it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pairforge.training.model.networks import backbones as bb
from pairforge.training.model.networks.text import empty_prompt_sd, load_embedding_file
from pairforge.training.model.pretrained_folders import require_folder, resolve_path

EXPORT_FORMAT = "pairforge-onestep-generator/1"


class OneStepGenerator(nn.Module):
    def __init__(self, vae, unet, scheduler, timestep: int, prompt_embeds: torch.Tensor,
                 learnable_prompt: bool = True, real_latent_gain: float = 1.0, padding_mode: str = "zeros"):
        super().__init__()
        self.real_latent_gain = float(real_latent_gain)
        #: how the VAE's and UNet's convs pad (bb.set_padding_mode); an export records it
        self.padding_mode = padding_mode
        bb.set_padding_mode(vae, padding_mode)
        bb.set_padding_mode(unet, padding_mode)
        self.vae = vae
        self.unet = unet
        self.timestep = int(timestep)
        self.latent_scale = float(vae.config.scaling_factor)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.detach().clone().float(),
                             persistent=False)
        self.scheduler_config = dict(scheduler.config)
        if learnable_prompt:
            self.prompt_embeds = nn.Parameter(prompt_embeds.detach().clone())
        else:
            self.register_buffer("prompt_embeds", prompt_embeds.detach().clone())

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def _encode(self, image01: torch.Tensor) -> torch.Tensor:
        x = image01.to(self.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mode() * self.latent_scale

    def forward(self, lr_up: torch.Tensor, hr: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """lr_up: LR bicubic-upsampled to HR size, (B,3,H,W) in [0,1].

        Returns ``sr`` (B,3,H,W) in [0,1], ``z_fake`` (the predicted HR latent) and, when
        ``hr`` is given, ``z_real`` = E(hr)·gain without gradient (the discriminator's real input,
        in the decoder's latent space).
        """
        z_lr = self._encode(lr_up)
        b = z_lr.shape[0]
        t = torch.full((b,), self.timestep, device=z_lr.device, dtype=torch.long)
        context = self.prompt_embeds.to(z_lr.dtype).expand(b, -1, -1)
        eps = self.unet(z_lr, t, encoder_hidden_states=context).sample
        a = self.alphas_cumprod[self.timestep].to(z_lr.dtype)
        z_hr = (z_lr - (1 - a).sqrt() * eps) / a.sqrt()
        x_hr = self.vae.decode(z_hr / self.latent_scale).sample.clamp(-1, 1)
        out = {"sr": (x_hr + 1) / 2, "z_fake": z_hr}
        if hr is not None:
            with torch.no_grad():
                out["z_real"] = self._encode(hr) * self.real_latent_gain
        return out

    # ------------------------------------------------------------------ export / import
    def export(self, out_dir: str | Path, base: str, lora_on_base: bool) -> dict:
        """Write a self-contained diffusers-layout generator to ``out_dir``:

        - ``lora/pytorch_lora_weights.safetensors``: the UNet LoRA in diffusers format
          (loadable with ``UNet2DConditionModel.load_lora_adapter(..., prefix="unet")``)
        - ``unet/``: the UNet with the LoRA merged (``diffusion_pytorch_model.safetensors``)
        - ``vae/``, ``scheduler/``: as used in training
        - ``prompt_embeds.safetensors`` and ``pairforge_generator.json`` (timestep, scale, base)
        """
        import copy

        from diffusers import StableDiffusionPipeline
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unet = copy.deepcopy(self.unet).float().cpu()
        has_lora = bool(getattr(unet, "peft_config", None))
        if has_lora:
            # peft-format keys ("unet.<module>.lora_A.weight"): the form diffusers' LoRA loaders
            # read for every layer type (the legacy conversion renames attention layers only)
            lora_sd = get_peft_model_state_dict(unet)
            StableDiffusionPipeline.save_lora_weights(out / "lora", unet_lora_layers=lora_sd,
                                                      safe_serialization=True)
            unet.fuse_lora(lora_scale=1.0)
            unet.unload_lora()
        unet.save_pretrained(out / "unet", safe_serialization=True)
        copy.deepcopy(self.vae).float().cpu().save_pretrained(out / "vae", safe_serialization=True)
        bb.default_scheduler().from_config(self.scheduler_config).save_pretrained(out / "scheduler")
        save_file({"prompt_embeds": self.prompt_embeds.detach().float().cpu().contiguous()},
                  str(out / "prompt_embeds.safetensors"))
        meta = {"format": EXPORT_FORMAT, "timestep": self.timestep, "latent_scale": self.latent_scale,
                "base": base, "has_lora": has_lora, "padding_mode": self.padding_mode,
                "lora_applies_to_base": bool(has_lora and lora_on_base),
                "note": "unet/ already contains the merged LoRA; lora/ applies to the base UNet only "
                        "when lora_applies_to_base is true (the base UNet weights were frozen). "
                        "padding_mode: how every padded conv of vae/ and unet/ pads (diffusers' configs "
                        "do not save it; from_export re-applies it)."}
        (out / "pairforge_generator.json").write_text(json.dumps(meta, indent=2))
        return meta

    @classmethod
    def from_export(cls, export_dir: str | Path, torch_dtype=torch.float32) -> "OneStepGenerator":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from safetensors.torch import load_file

        d = Path(export_dir)
        meta = json.loads((d / "pairforge_generator.json").read_text())
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{d}: not a pairforge generator export ({meta.get('format')!r})")
        vae = AutoencoderKL.from_pretrained(d, subfolder="vae", torch_dtype=torch_dtype)
        unet = UNet2DConditionModel.from_pretrained(d, subfolder="unet", torch_dtype=torch_dtype)
        sched = DDPMScheduler.from_pretrained(d, subfolder="scheduler")
        pe = load_file(str(d / "prompt_embeds.safetensors"))["prompt_embeds"].to(torch_dtype)
        gen = cls(vae, unet, sched, meta["timestep"], pe, learnable_prompt=False,
                  padding_mode=meta.get("padding_mode", "zeros"))
        return gen.eval().requires_grad_(False)


def _prompt_embeds(cfg, root: Path | None, cross_dim: int) -> torch.Tensor:
    if cfg.text_embedding == "zeros":
        return torch.zeros(1, 1 if root is None else 77, cross_dim)
    if cfg.text_embedding == "empty-prompt":
        if root is None:
            raise ValueError("generator.text_embedding: 'empty-prompt' needs a pretrained generator")
        return empty_prompt_sd(root)
    return load_embedding_file(cfg.text_embedding)["prompt_embeds"].float()


def build_generator(cfg, seed: int = 0) -> OneStepGenerator:
    """Build from a GeneratorConfig; trainable parts follow the config (everything else frozen)."""
    root = None
    real_gain = 1.0
    if cfg.arch == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(seed + bb.SEED_OFFSET_GENERATOR_BACKBONE)
            vae, unet = bb.tiny_vae(), bb.tiny_unet()
        bb.init_tiny_vae_as_resampler(vae)
        vae.register_to_config(scaling_factor=1.0)
        sched = bb.default_scheduler()
        real_gain = bb.start_at_identity(vae, unet, float(sched.alphas_cumprod[cfg.timestep]))
    else:
        root = require_folder(cfg.pretrained_path, ["vae", "unet"], cfg.hub_id, "generator.pretrained_path")
        vae, unet, sched = bb.load_vae(root), bb.load_unet(root), bb.load_scheduler(root)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    if cfg.train_lora:
        with torch.random.fork_rng():
            torch.manual_seed(seed + bb.SEED_OFFSET_GENERATOR_LORA)
            bb.add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if cfg.train_unet:
        unet.requires_grad_(True)
    if cfg.train_vae:
        vae.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_vae:
            vae.enable_gradient_checkpointing()
    pe = _prompt_embeds(cfg, root, unet.config.cross_attention_dim)
    return OneStepGenerator(vae, unet, sched, cfg.timestep, pe, learnable_prompt=cfg.learnable_text_embedding,
                            real_latent_gain=real_gain, padding_mode=cfg.padding_mode)


def generator_base_description(cfg, seed: int) -> str:
    return f"tiny(seed={seed})" if cfg.arch == "tiny" else str(resolve_path(cfg.pretrained_path))
