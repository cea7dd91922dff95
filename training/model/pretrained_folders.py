"""Local pretrained folders (diffusers layout): where a preset's weights must be, and the one-line
refusal naming the config field and the Hub repository when they are not.

Kept apart from :mod:`pairforge.training.model.networks.backbones` (which imports diffusers,
~5 s) so that ``pairforge train``'s preflight refuses a missing folder in a fraction of a second.
"""
from __future__ import annotations

import os
from pathlib import Path

from pairforge.errors import UsageError

__all__ = ["PretrainedMissing", "resolve_path", "require_folder"]


class PretrainedMissing(UsageError, FileNotFoundError):
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
