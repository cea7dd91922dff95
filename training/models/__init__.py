"""Generator and diffusion discriminator on diffusers + peft."""
from .discriminator import DiffusionDiscriminator, build_discriminator
from .generator import OneStepGenerator, build_generator

__all__ = ["OneStepGenerator", "build_generator", "DiffusionDiscriminator", "build_discriminator"]
