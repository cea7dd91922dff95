"""Full-size D3SR networks built from their published configurations with random weights.

Timing and memory depend on the architecture, not on the weights, and the hub is out of
reach on benchmark machines; so the benchmarks build Stable Diffusion 2.1-base's VAE and UNet
(and SDXL's partial UNet for the discriminator) from configuration alone.
"""
from __future__ import annotations

import torch

#: Stable Diffusion 2.1-base UNet (stabilityai/stable-diffusion-2-1-base unet/config.json)
SD21_UNET = dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))


def sd21_vae():
    """SD2.1's AutoencoderKL (×8, 4 latent channels)."""
    from diffusers import AutoencoderKL

    from pairforge.training.model.networks import backbones as bb

    return AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                         sample_size=512, scaling_factor=bb.SD21_LATENT_SCALE)


def sd21_generator(lora_targets: list[str] | None = None, lora_rank: int = 16, gradient_checkpointing: bool = False):
    """D3SR's one-step generator at full size: SD2.1 VAE + UNet (LoRA rank 16), T_L = 399."""
    from diffusers import UNet2DConditionModel

    from pairforge.training.config import DEFAULT_UNET_LORA_TARGETS
    from pairforge.training.model.networks import backbones as bb
    from pairforge.training.model.networks.generator import OneStepGenerator

    vae, unet = sd21_vae(), UNet2DConditionModel(**SD21_UNET)
    vae.requires_grad_(False)
    unet.requires_grad_(False)
    if lora_rank:
        bb.add_lora(unet, lora_rank, lora_rank, list(lora_targets or DEFAULT_UNET_LORA_TARGETS))
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return OneStepGenerator(vae, unet, bb.default_scheduler(), 399, torch.zeros(1, 77, 1024))
