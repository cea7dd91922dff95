"""Where the diffusers building blocks come from: local pretrained folders or tiny configs.

Weights are never downloaded here. A pretrained preset points at a local folder in
diffusers layout (``vae/``, ``unet/``, ``scheduler/`` …); when it is missing the error says
which Hub repository to download and where to put it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

#: VAE latent scaling factors, spelled out because the generator (SD2.1 VAE) and an SDXL
#: discriminator live in different latent spaces.
SD21_LATENT_SCALE = 0.18215
SDXL_LATENT_SCALE = 0.13025


class PretrainedMissing(FileNotFoundError):
    """A pretrained folder (diffusers layout) is not where the config says."""


def resolve_path(path: str | os.PathLike) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def require_folder(path: str | os.PathLike | None, subfolders: list[str], hub_id: str, field: str) -> Path:
    if not path:
        raise PretrainedMissing(f"{field}: no folder given; download {hub_id} in diffusers layout and set {field}")
    root = resolve_path(path)
    missing = [s for s in subfolders if not (root / s).is_dir()]
    if missing:
        raise PretrainedMissing(
            f"{field}: {root} is missing {', '.join(s + '/' for s in missing)}.\n"
            f"Download the diffusers-format weights of {hub_id} on a machine with Hub access, e.g.\n"
            f"  huggingface-cli download {hub_id} --local-dir {root}\n"
            f"or `diffusers.DiffusionPipeline.from_pretrained('{hub_id}').save_pretrained('{root}')`,\n"
            f"then copy the folder to {root} (or set {field} to where it is). Nothing is downloaded at train time.")
    return root


# --------------------------------------------------------------------------- tiny configs
def tiny_vae() -> AutoencoderKL:
    """A 4× VAE (3 levels), no attention: a few hundred K parameters."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8,
        sample_size=64, mid_block_add_attention=False, scaling_factor=SD21_LATENT_SCALE,
    )


def tiny_unet(cross_attention_dim: int = 32, sdxl_like: bool = False) -> UNet2DConditionModel:
    """A 2-level UNet with cross-attention only at the lower resolution.

    ``sdxl_like`` adds SDXL's ``text_time`` added conditions (pooled text embedding +
    6 time ids), so the SDXL code paths are exercised without SDXL weights.
    """
    kwargs = dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
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


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters() if "lora_" in n]
