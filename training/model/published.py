"""The papers' own numbers, to print under a user's row when dataset and protocol match.

The table lives in ``published_results.yaml`` beside this module (collected in the project's
methods digest); each row carries its source and how directly it was read. Rows are matched by
dataset name and by protocol, because the same method scores differently on StableSR's 512²
crops and on whole images (D3SR's table against OSEDiff's), and a row measured one way says
nothing about a run measured the other way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

__all__ = ["DATASETS", "PROTOCOLS", "METRICS", "PublishedRow", "load_published", "matching", "protocol_note"]

#: dataset names a user can claim for their run (``--dataset-name``)
DATASETS = ("RealSR", "DRealSR", "DIV2K-val")
#: protocols a user can claim for their run (``--protocol``); "unknown" rows are never matched
PROTOCOLS = ("stablesr-crops", "whole-image")
#: the metrics a published row may report, in the papers' column order
METRICS = ("psnr_y", "ssim_y", "lpips", "dists", "fid", "niqe", "musiq", "maniqa", "clipiqa")
_EVIDENCE = ("paper", "readme", "second-hand")
_TABLE = Path(__file__).with_name("published_results.yaml")


@dataclass(frozen=True)
class PublishedRow:
    method: str
    dataset: str
    protocol: str
    source: str
    evidence: str
    metrics: dict[str, float] = field(default_factory=dict)


def _row(entry: dict, protocols: dict) -> PublishedRow:
    unknown = set(entry) - {"method", "dataset", "protocol", "source", "evidence", *METRICS}
    if unknown:
        raise ValueError(f"published row {entry.get('method')!r}: unknown keys {sorted(unknown)}")
    if entry["dataset"] not in DATASETS or entry["protocol"] not in protocols or entry["evidence"] not in _EVIDENCE:
        raise ValueError(f"published row {entry['method']!r}: bad dataset/protocol/evidence in {entry}")
    if not str(entry.get("source", "")).strip():
        raise ValueError(f"published row {entry['method']!r} has no source")
    metrics = {k: float(entry[k]) for k in METRICS if k in entry}
    return PublishedRow(entry["method"], entry["dataset"], entry["protocol"], entry["source"], entry["evidence"],
                        metrics)


@lru_cache(maxsize=1)
def _load() -> tuple[dict[str, str], tuple[PublishedRow, ...]]:
    data = yaml.safe_load(_TABLE.read_text())
    protocols = {k: " ".join(str(v).split()) for k, v in data["protocols"].items()}
    return protocols, tuple(_row(e, protocols) for e in data["results"])


def load_published() -> list[PublishedRow]:
    """Every published row, in the file's order."""
    return list(_load()[1])


def protocol_note(protocol: str) -> str:
    """What a protocol name means (the images and the metric code behind the rows)."""
    return _load()[0][protocol]


def matching(dataset: str | None, protocol: str | None) -> list[PublishedRow]:
    """The rows measured on ``dataset`` under ``protocol``; none unless both are given."""
    if dataset is None or protocol is None:
        return []
    return [r for r in load_published() if r.dataset == dataset and r.protocol == protocol]
