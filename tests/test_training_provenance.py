"""Every value of the D3SR presets says where it comes from; guesses are never stated as the paper's.

D3SR's main text gives the architecture, LoRA rank, optimiser lr, batch, crop and iterations;
T_L, the loss weights, weight decay, clipping, the text embedding's training and the
discriminator's latent mapping are not in it.  Each leaf line of a preset carries a comment
``D3SR:``, ``assumption: <source>`` or ``pairforge:`` (how the tool runs, not the method).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

PRESETS = Path(__file__).resolve().parents[1] / "training" / "presets"
TAGS = ("D3SR:", "assumption:", "pairforge:")
#: values D3SR's main text does not give: they must be marked as assumptions
NOT_IN_D3SR_MAIN_TEXT = ["generator.timestep", "generator.text_embedding", "generator.learnable_text_embedding",
                         "discriminator.head_hidden", "discriminator.text_embedding", "loss.ea_dists", "loss.adv", "optim_g.weight_decay",
                         "optim_g.grad_clip", "optim_d.weight_decay", "optim_d.grad_clip", "engine.precision"]


def _tagged_leaves(path: Path) -> dict[str, str]:
    """dotted key → the comment on its line, for every leaf line of a block-style YAML."""
    out, stack = {}, []
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.match(r"^( *)([A-Za-z_]\w*):\s*(.*)$", line)
        assert m, f"{path.name}: unparsed line {line!r}"
        indent, key, rest = len(m.group(1)) // 2, m.group(2), m.group(3)
        stack = stack[:indent] + [key]
        value, _, comment = rest.partition("#")
        if value.strip():
            out[".".join(stack)] = comment.strip()
    return out


@pytest.mark.parametrize("name", ["d3sr-sd21", "d3sr-sdxl"])
def test_every_value_names_its_source(name):
    leaves = _tagged_leaves(PRESETS / f"{name}.yaml")
    assert len(leaves) > 30  # the parser saw the whole file
    untagged = [k for k, c in leaves.items() if not c.startswith(TAGS)]
    assert not untagged, f"{name}: values without a source comment: {untagged}"
    for key in NOT_IN_D3SR_MAIN_TEXT:
        assert leaves[key].startswith("assumption:"), f"{name}: {key} is not in D3SR's main text: {leaves[key]!r}"
    for key, comment in leaves.items():
        if comment.startswith("assumption:"):
            assert len(comment) > len("assumption: ") + 5, f"{name}: {key}: an assumption must name its source"
    # the tagged file is the preset the loader reads
    assert yaml.safe_load((PRESETS / f"{name}.yaml").read_text())["name"] == name


def test_sdxl_discriminator_maps_latents_exactly():
    from pairforge.training.config import load_config

    assert load_config(preset="d3sr-sdxl").discriminator.latent_adapter == "reencode"
