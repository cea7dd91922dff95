"""Where the diffusers building blocks come from: local pretrained folders or tiny configs.

Weights are never downloaded here. A pretrained preset points at a local folder in
diffusers layout (``vae/``, ``unet/``, ``scheduler/`` …); when it is missing the error says
which Hub repository to download and where to put it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

#: VAE latent scaling factors, spelled out because the generator (SD2.1 VAE) and an SDXL
#: discriminator live in different latent spaces.
SD21_LATENT_SCALE = 0.18215
SDXL_LATENT_SCALE = 0.13025

#: Offsets added to the run's seed for each randomly initialised part. Each part draws from its
#: own seed (inside ``torch.random.fork_rng``) so that resizing or adding one part never changes
#: another's initial weights, and the generator's and discriminator's never coincide. The values
#: are part of every earlier run's identity: changing one changes that part's initial weights.
SEED_OFFSET_GENERATOR_BACKBONE = 0   # tiny VAE + UNet
SEED_OFFSET_GENERATOR_LORA = 1
SEED_OFFSET_DISCRIMINATOR_BACKBONE = 100   # tiny UNet (and its VAE for "reencode")
SEED_OFFSET_DISCRIMINATOR_LORA = 101
SEED_OFFSET_DISCRIMINATOR_HEAD = 102   # the MLP patch head


# --------------------------------------------------------------------------- tiny configs
def tiny_vae() -> AutoencoderKL:
    """A 4× VAE (3 levels), no attention: a few hundred K parameters."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=4,
        sample_size=64, mid_block_add_attention=False, scaling_factor=SD21_LATENT_SCALE,
    )


def init_tiny_vae_as_resampler(vae: AutoencoderKL, k: float = 10.0, sharpen: float = 0.2) -> AutoencoderKL:
    """Set :func:`tiny_vae`'s weights so that it is a near-lossless resampler from the start:
    the encoder's mean is the 4×4 box average of the RGB image (latent channel 3 is spare), the
    decoder two bilinear ×2 upsamplings of it after a mild unsharp mask (``sharpen``).

    A random-init VAE decodes noise, so the tiny generator would start far below its own
    bicubic input and spend the demo's steps learning to reconstruct. Every resnet's residual
    branch starts at zero (its last conv), so the blocks are their shortcuts and the network is
    linear up to the final GroupNorm + SiLU of the encoder and of the decoder. Those stay linear
    because each colour s rides in one norm group as the four channels (k+s, k−s, −k+s, −k−s):
    the group mean is exactly 0, the group std is k·const up to a relative ⟨s²⟩/2k², and
    SiLU(n) − SiLU(−n) = n recovers s exactly from the four. Training starts from there.
    """
    enc, dec = vae.encoder, vae.decoder
    pair = torch.tensor([[0.25, 0.5, 0.25]])
    bilinear = pair.T @ pair                 # nearest ×2 then this 3×3 = bilinear ×2
    signs = (1.0, -1.0, 1.0, -1.0)
    consts = torch.tensor([1.0, 1.0, -1.0, -1.0]) * k

    def center(conv, entries):               # conv.weight[o, i, centre] = w
        c = conv.weight.shape[-1] // 2
        for o, i, w in entries:
            conv.weight[o, i, c, c] = w

    def carry(conv, n):                      # pass the first n channels through
        center(conv, [(c, c, 1.0) for c in range(n)])

    def carry_shortcuts(blocks, fan):       # every shortcut but the fan-out one passes RGB through
        for blk in blocks:
            for r in blk.resnets:
                if r.conv_shortcut is not None and r is not fan:
                    carry(r.conv_shortcut, 3)

    def fan_out(conv, group):                # colour c → the 4 channels of norm group c
        center(conv, [(group * c + j, c, signs[j]) for c in range(3) for j in range(4)])

    def split_norm(norm, out_conv, group):   # n_j = (±k ± s)/σ; Σ± SiLU(n_j) = 2s/σ
        sigma = (4 * k * k / group) ** 0.5
        for c in range(3):
            center(out_conv, [(c, group * c + j, signs[j] * sigma / 2) for j in range(4)])

    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        # encoder: x → (box 2×2 ↓) ×2 → fan out → + consts → norm/SiLU → mean = box4(x)
        eg = enc.conv_norm_out.num_channels // enc.conv_norm_out.num_groups
        fan = enc.down_blocks[-1].resnets[0]
        carry(enc.conv_in, 3)
        carry_shortcuts(enc.down_blocks, fan)
        for blk in enc.down_blocks:
            for d in blk.downsamplers or []:
                for c in range(3):
                    d.conv.weight[c, c, 0:2, 0:2] = 0.25
        fan_out(fan.conv_shortcut, eg)
        for c in range(3):
            enc.mid_block.resnets[-1].conv2.bias[eg * c:eg * c + 4] = consts
        split_norm(enc.conv_norm_out, enc.conv_out, eg)
        carry(vae.quant_conv, vae.quant_conv.weight.shape[0])
        # decoder: z → (nearest ×2 + bilinear 3×3) ×2 → fan out → + consts → norm/SiLU → RGB
        dg = dec.conv_norm_out.num_channels // dec.conv_norm_out.num_groups
        fan = dec.up_blocks[-1].resnets[0]
        carry(vae.post_quant_conv, 4)
        for c in range(3):  # a mild unsharp mask on the latent: box ↓ + bilinear ↑ blur less
            dec.conv_in.weight[c, c] = torch.tensor([[0, -sharpen, 0], [-sharpen, 1 + 4 * sharpen, -sharpen],
                                                     [0, -sharpen, 0]])
        carry_shortcuts(dec.up_blocks, fan)
        for blk in dec.up_blocks:
            for u in blk.upsamplers or []:
                for c in range(3):
                    u.conv.weight[c, c] = bilinear
        fan_out(fan.conv_shortcut, dg)
        for c in range(3):
            dec.up_blocks[-1].resnets[-1].conv2.bias[dg * c:dg * c + 4] = consts
        split_norm(dec.conv_norm_out, dec.conv_out, dg)
    return vae


def start_at_identity(vae: AutoencoderKL, unet: UNet2DConditionModel, alpha_bar: float) -> float:
    """Make a (tiny) generator start at its input: ε̂ = 0 and D(E(x)/√ᾱ) = D_before(E(x)).

    The UNet's output conv is zeroed, so ẑ_H = (z_L − √(1−ᾱ)·ε̂)/√ᾱ = z_L/√ᾱ at step 0; the
    decoder's first (1×1) conv absorbs that 1/√ᾱ, so the first SR image is the VAE's
    reconstruction of the bicubic input. Returns the gain 1/√ᾱ that maps encoder latents into
    the decoder's space (the generator applies it to the real latents the discriminator sees).
    """
    gain = float(alpha_bar) ** -0.5
    with torch.no_grad():
        torch.nn.init.zeros_(unet.conv_out.weight)
        torch.nn.init.zeros_(unet.conv_out.bias)
        vae.post_quant_conv.weight.div_(gain)
    return gain


def set_padding_mode(module: torch.nn.Module, mode: str) -> int:
    """Make every padded ``Conv2d`` under ``module`` pad with ``mode`` ("zeros", "replicate",
    "reflect"); returns how many convolutions changed. LoRA's own convs (peft's ``lora_A``) are
    included, so a merged export pads exactly as training did.

    diffusers' configs do not record a conv's ``padding_mode``: whoever loads saved weights must
    apply it again (:meth:`~.generator.OneStepGenerator.from_export` does). diffusers' encoder
    downsamplers pad explicitly with zeros (bottom/right, one pixel) and stay as they are.
    """
    if mode not in ("zeros", "replicate", "reflect"):
        raise ValueError(f"padding_mode: expected zeros, replicate or reflect, got {mode!r}")
    n = 0
    for m in module.modules():
        padded = isinstance(m, torch.nn.Conv2d) and (isinstance(m.padding, str) or any(m.padding))
        if padded and m.padding_mode != mode:
            m.padding_mode = mode
            n += 1
    return n


def tiny_unet(cross_attention_dim: int = 32, sdxl_like: bool = False, in_channels: int = 4) -> UNet2DConditionModel:
    """A 2-level UNet with cross-attention only at the lower resolution.

    ``sdxl_like`` adds SDXL's ``text_time`` added conditions (pooled text embedding +
    6 time ids), so the SDXL code paths are exercised without SDXL weights.
    """
    kwargs = dict(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8,
    )
    if sdxl_like:
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=cross_attention_dim + 6 * 8)
    return UNet2DConditionModel(**kwargs)


def default_scheduler() -> DDPMScheduler:
    """SD2.1-base's training schedule (scaled_linear 0.00085 → 0.012, 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False, prediction_type="epsilon")


def load_scheduler(root: Path | None) -> DDPMScheduler:
    if root is not None and (root / "scheduler").is_dir():
        return DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    return default_scheduler()


def load_vae(root: Path) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch.float32)


def load_unet(root: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch.float32)


# --------------------------------------------------------------------------- LoRA
def add_lora(unet: torch.nn.Module, rank: int, alpha: float, targets: list[str],
             adapter_name: str = "default", exclude_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Attach a peft LoRA adapter (Gaussian A, zero B: the model starts unchanged).

    Returns the module names that received LoRA. ``exclude_prefixes`` drops modules (e.g.
    the up blocks a discriminator does not keep).
    """
    from peft import LoraConfig

    names = []
    for name, mod in unet.named_modules():
        if exclude_prefixes and name.startswith(exclude_prefixes):
            continue
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            names.append(name)
    if not names:
        raise ValueError(f"lora_targets {targets} match no Linear/Conv2d module")
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=names)
    unet.add_adapter(cfg, adapter_name=adapter_name)
    return names
