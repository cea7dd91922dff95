"""Generator and diffusion discriminator on diffusers + peft."""
from pairforge.training.model.networks.discriminator import DiffusionDiscriminator, build_discriminator
from pairforge.training.model.networks.generator import OneStepGenerator, build_generator

__all__ = ["OneStepGenerator", "build_generator", "DiffusionDiscriminator", "build_discriminator"]
