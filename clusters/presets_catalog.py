"""The bundled presets of both kinds, found without importing their packages (no torch), so
every command's ``--help`` can name them and ``pairforge presets`` can list them."""
from __future__ import annotations

import importlib.util
from pathlib import Path

#: kind -> (package holding a presets/ folder, the commands that take such a preset)
KINDS: dict[str, tuple[str, str]] = {
    "degradation": ("pairforge.degradations", "synth, degrade"),
    "training": ("pairforge.training", "train"),
}
#: a summary longer than this is cut (with an ellipsis) in the listing
SUMMARY_CHARS = 100


def preset_dir(kind: str) -> Path:
    """The bundled presets folder of ``kind``, found without importing the package (torch)."""
    spec = importlib.util.find_spec(KINDS[kind][0])
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {KINDS[kind][0]} is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "presets"


def preset_names(kind: str) -> list[str]:
    """Names of the bundled presets of ``kind`` (``degradation`` or ``training``), sorted."""
    return sorted(p.stem for p in preset_dir(kind).glob("*.yaml"))


def summary(kind: str, name: str) -> str:
    """The first sentence of the preset file's leading comment (its description), on one line."""
    lines = []
    for line in (preset_dir(kind) / f"{name}.yaml").read_text().splitlines():
        text = line.strip()
        if not text.startswith("#") or text.lstrip("#").strip().startswith("*"):
            break  # the description ends at the first setting, blank line or bullet list
        lines.append(text.lstrip("#").strip())
    text = " ".join(lines)
    end = text.find(". ")
    text = text[: end + 1] if end >= 0 else text
    if len(text) > SUMMARY_CHARS:
        text = text[: SUMMARY_CHARS - 1].rsplit(" ", 1)[0] + " …"
    return text


def names_help(kind: str) -> str:
    """``a | b | c`` for a ``--preset`` help text."""
    try:
        return " | ".join(preset_names(kind))
    except RuntimeError:
        return "see `pairforge presets`"
