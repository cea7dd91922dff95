"""The diffusion discriminator: a diffusion UNet's encoder half plus an MLP patch head.

Real latents z_H = E(x_H) and generated latents ẑ_H are both forward-diffused to the *same*
random t (per sample), z_t = √ᾱ_t·z + √(1−ᾱ_t)·ε, then pass through the UNet's conv_in,
down blocks and mid block (LoRA on down+mid, conditioned on t and a fixed prompt
embedding); a randomly initialised 1×1-conv MLP turns each mid-block feature vector into a
real/fake logit, so the output is a (B, 1, h, w) grid of patch logits.

SDXL as discriminator needs three explicit decisions (D3SR does not state them):
- cross-attention is 2048-d: a fixed prompt embedding (zeros, the empty prompt encoded once
  with SDXL's two text encoders, or a file) is fed to every block;
- ``text_time`` added conditions: a fixed pooled text embedding (same source) plus time ids
  [h, w, 0, 0, h, w] in pixels of the current patch size;
- the generator's latents are SD2.1-VAE latents scaled by 0.18215 while SDXL expects
  SDXL-VAE latents scaled by 0.13025: ``latent_adapter="rescale"`` maps z ↦ z/0.18215·0.13025
  (same statistics, approximate space); ``"reencode"`` encodes the images with the SDXL VAE
  (exact, one extra encoder pass with gradient for the fake).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pairforge.training.model.networks import backbones as bb
from pairforge.training.model.networks.text import empty_prompt_sd, empty_prompt_sdxl, load_embedding_file
from pairforge.training.model.pretrained_folders import require_folder


class PatchHead(nn.Module):
    """Random-init MLP applied per spatial position (1×1 convs).

    ``norm="groupnorm"`` puts a GroupNorm + SiLU in front (as a diffusion UNet's ``conv_norm_out``);
    ``"none"`` feeds the mid-block features straight in. A GroupNorm normalises each sample over
    its channels and positions, so it removes the per-sample feature scale, which is where a
    randomly initialised discriminator first sees "less high-frequency energy" (blur, a degraded
    image): measured on the ``tiny`` preset, a normed head stayed at chance for ~100 steps on real
    vs blurred latents where the same head without it separated them within ~20
    (docs/training.md, "The diffusion discriminator"). D3SR says only "an MLP on the mid-block".
    """

    def __init__(self, in_ch: int, hidden: int, norm: str = "groupnorm"):
        super().__init__()
        if norm not in ("groupnorm", "none"):
            raise ValueError(f"discriminator.head_norm: expected groupnorm or none, got {norm!r}")
        groups = 32 if in_ch % 32 == 0 else 8
        front = [nn.GroupNorm(groups, in_ch), nn.SiLU()] if norm == "groupnorm" else []
        self.net = nn.Sequential(
            *front,
            nn.Conv2d(in_ch, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class DiffusionDiscriminator(nn.Module):
    def __init__(self, unet, scheduler, head_hidden: int, prompt_embeds: torch.Tensor,
                 pooled_embeds: torch.Tensor | None, gen_latent_scale: float, disc_latent_scale: float,
                 latent_adapter: str = "rescale", vae=None, vae_scale_factor: int = 8, head_norm: str = "groupnorm"):
        super().__init__()
        # keep only the encoder half of the UNet
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.sdxl = unet.config.addition_embed_type == "text_time"
        if self.sdxl:
            self.add_time_proj = unet.add_time_proj
            self.add_embedding = unet.add_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.head = PatchHead(unet.config.block_out_channels[-1], head_hidden, head_norm)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.detach().clone().float(),
                             persistent=False)
        self.register_buffer("prompt_embeds", prompt_embeds.detach().clone())
        if self.sdxl:
            self.register_buffer("pooled_embeds", pooled_embeds.detach().clone())
        self.gen_latent_scale = float(gen_latent_scale)
        self.disc_latent_scale = float(disc_latent_scale)
        self.latent_adapter = latent_adapter
        self.vae = vae  # only for latent_adapter="reencode" (frozen)
        self.vae_scale_factor = int(vae_scale_factor)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def latent_shape(self, z_gen: torch.Tensor, image01: torch.Tensor | None = None) -> torch.Size:
        """The shape of what this discriminator noises for a generator latent / image (the
        trainer draws the noise, seeded, in this shape)."""
        if self.latent_adapter == "unshuffle":
            b, c, h, w = image01.shape
            f = self.vae_scale_factor
            return torch.Size((b, c * f * f, h // f, w // f))
        return z_gen.shape

    def to_disc_latent(self, z_gen: torch.Tensor | None, image01: torch.Tensor | None) -> torch.Tensor:
        """Map a generator latent (or the image, for "reencode" / "unshuffle") into this UNet's
        input space. "unshuffle" is a lossless space-to-depth view of the image (each f×f block
        of pixels becomes 3·f² channels at the latent's resolution): for the tiny presets, whose
        box-filter "VAE" latent drops exactly the detail real and generated images differ in."""
        if self.latent_adapter == "rescale":
            return z_gen.to(self.dtype) * (self.disc_latent_scale / self.gen_latent_scale)
        x = image01.to(self.dtype) * 2 - 1
        if self.latent_adapter == "unshuffle":
            return torch.nn.functional.pixel_unshuffle(x, self.vae_scale_factor)
        return self.vae.encode(x).latent_dist.mode() * self.disc_latent_scale

    def forward(self, z: torch.Tensor | None, t: torch.Tensor, noise: torch.Tensor,
                image01: torch.Tensor | None = None) -> torch.Tensor:
        """z: generator latent (B,4,h,w); t: (B,) timesteps; noise: like z (caller-seeded).

        Returns patch logits (B, 1, h', w') (float32).
        """
        z = self.to_disc_latent(z, image01)
        a = self.alphas_cumprod[t].to(z.dtype).view(-1, 1, 1, 1)
        z_t = a.sqrt() * z + (1 - a).sqrt() * noise.to(z.dtype)
        b = z_t.shape[0]
        emb = self.time_embedding(self.time_proj(t).to(z_t.dtype))
        context = self.prompt_embeds.to(z_t.dtype).expand(b, -1, -1)
        if self.sdxl:
            hp, wp = z_t.shape[-2] * self.vae_scale_factor, z_t.shape[-1] * self.vae_scale_factor
            time_ids = torch.tensor([hp, wp, 0, 0, hp, wp], device=z_t.device, dtype=z_t.dtype).repeat(b, 1)
            time_embeds = self.add_time_proj(time_ids.flatten()).reshape(b, -1).to(z_t.dtype)
            pooled = self.pooled_embeds.to(z_t.dtype).expand(b, -1)
            emb = emb + self.add_embedding(torch.cat([pooled, time_embeds], dim=-1))
        h = self.conv_in(z_t)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                h, _ = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
            else:
                h, _ = block(hidden_states=h, temb=emb)
        h = self.mid_block(h, emb, encoder_hidden_states=context)
        return self.head(h).float()


def build_discriminator(cfg, gen_latent_scale: float, seed: int = 0) -> DiffusionDiscriminator:
    root: Path | None = None
    vae = None
    if cfg.arch in ("tiny", "tiny-sdxl"):
        sdxl = cfg.arch == "tiny-sdxl"
        vae_factor = 4  # the tiny VAE's
        with torch.random.fork_rng():
            torch.manual_seed(seed + bb.SEED_OFFSET_DISCRIMINATOR_BACKBONE)
            in_channels = 3 * vae_factor ** 2 if cfg.latent_adapter == "unshuffle" else 4
            unet = bb.tiny_unet(cross_attention_dim=48 if sdxl else 32, sdxl_like=sdxl, in_channels=in_channels)
            if cfg.latent_adapter == "reencode":
                vae = bb.tiny_vae()
        sched = bb.default_scheduler()
        # a tiny SDXL-like discriminator pretends to live in a different latent space, so the
        # rescale path is exercised; tiny SD-like shares the generator's scale
        disc_scale = bb.SDXL_LATENT_SCALE if sdxl else gen_latent_scale
    else:
        subs = ["unet"] + (["vae"] if cfg.latent_adapter == "reencode" else [])
        root = require_folder(cfg.pretrained_path, subs, cfg.hub_id, "discriminator.pretrained_path")
        unet, sched = bb.load_unet(root), bb.load_scheduler(root)
        if cfg.latent_adapter == "reencode":
            vae = bb.load_vae(root)
            disc_scale = float(vae.config.scaling_factor)
        else:
            disc_scale = bb.SDXL_LATENT_SCALE if cfg.arch == "sdxl" else bb.SD21_LATENT_SCALE
        vae_factor = 8
    if vae is not None:
        vae.requires_grad_(False)
        del vae.decoder, vae.post_quant_conv
    unet.requires_grad_(False)
    if cfg.train_lora:
        with torch.random.fork_rng():
            torch.manual_seed(seed + bb.SEED_OFFSET_DISCRIMINATOR_LORA)
            bb.add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets,
                        exclude_prefixes=("up_blocks", "conv_out", "conv_norm_out", "conv_in",
                                          "time_embedding", "add_embedding"))
    if cfg.train_backbone:
        unet.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    cross = unet.config.cross_attention_dim
    sdxl = unet.config.addition_embed_type == "text_time"
    pooled = None
    spec = getattr(cfg, "text_embedding", "zeros")
    if spec == "empty-prompt" and root is not None:
        if sdxl:
            prompt, pooled = empty_prompt_sdxl(root)
        else:
            prompt = empty_prompt_sd(root)
    elif spec not in ("zeros", "empty-prompt"):
        data = load_embedding_file(spec)
        prompt, pooled = data["prompt_embeds"].float(), data.get("pooled_prompt_embeds")
    else:
        prompt = torch.zeros(1, 1, cross)
    if sdxl and pooled is None:
        pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        pooled = torch.zeros(1, pooled_dim)
    with torch.random.fork_rng():
        torch.manual_seed(seed + bb.SEED_OFFSET_DISCRIMINATOR_HEAD)
        d = DiffusionDiscriminator(unet, sched, cfg.head_hidden, prompt, pooled, gen_latent_scale, disc_scale,
                                   cfg.latent_adapter, vae=vae, vae_scale_factor=vae_factor,
                                   head_norm=getattr(cfg, "head_norm", "groupnorm"))
    d.head.requires_grad_(True)
    return d
