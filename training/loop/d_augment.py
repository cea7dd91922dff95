"""What the discriminator sees, augmented: the same random flip/rotation for a sample's real and
fake input, differentiable, so a small dataset cannot be memorised.

Why: a random-init diffusion discriminator trained on the demo's 32 HR patches learned those
patches rather than "real vs generated" (training-batch accuracy 0.57, held-out 0.26 at
t < 100). The limited-data GAN remedy (DiffAugment, Zhao et al. 2020; ADA, Karras et al. 2020)
is to augment everything D sees — real and fake, in D's step and in G's adversarial term — with
transforms that keep "real vs generated" but change the content. Here: the eight symmetries of
the square (flips and 90° rotations), which are exact in latent space (a VAE's convolutions
commute with them up to their padding) and cost nothing. D3SR trains on 100K+ images and says
nothing of augmentation; for the full-size presets it is off by default.

One draw per sample from the trainer's seeded generator: the same symmetry for a sample's real
and fake latents (and images, for D's own-VAE re-encoding), so D compares like with like.
"""
from __future__ import annotations

import torch


def draw_symmetries(batch: int, square: bool, generator: torch.Generator, device) -> torch.Tensor:
    """One of the 8 symmetries of the square per sample (0..7: bit 0 = flip, bits 1-2 = quarter
    turns); only the 4 flips (0, 1 with and without a half turn) for non-square inputs."""
    codes = torch.randint(0, 8, (batch,), generator=generator, device=device)
    if not square:
        codes = codes % 2 + 4 * ((codes >> 2) % 2)  # flip and/or half turn: shape preserved
    return codes


def apply_symmetries(x: torch.Tensor | None, codes: torch.Tensor) -> torch.Tensor | None:
    """x (B, C, H, W) with sample i transformed by symmetry ``codes[i]`` (differentiable)."""
    if x is None:
        return None
    out = []
    for sample, code in zip(x, codes.tolist()):
        if code & 1:
            sample = sample.flip(-1)
        quarter_turns = code >> 1
        if quarter_turns:
            sample = torch.rot90(sample, quarter_turns, dims=(-2, -1))
        out.append(sample)
    return torch.stack(out)


def augment(kind: str, tensors: list[torch.Tensor | None], generator: torch.Generator,
            device) -> list[torch.Tensor | None]:
    """The same per-sample symmetry applied to every tensor of ``tensors`` (``kind`` "none":
    returned unchanged, and no random number is drawn)."""
    if kind == "none":
        return tensors
    first = next(t for t in tensors if t is not None)
    square = all(t is None or t.shape[-1] == t.shape[-2] for t in tensors)
    codes = draw_symmetries(first.shape[0], square, generator, device)
    return [apply_symmetries(t, codes) for t in tensors]
