"""One evaluation run, as ``pairforge eval``, ``pairforge demo`` and Python code run it.

:class:`EvalRequest` holds what ``pairforge eval`` parses (the same names); :func:`run_eval`
checks the inputs (device, data, shards present) before anything loads, then scores every method
on the same pairs; :func:`report` writes ``metrics.json``, ``per_image.csv`` and ``table.md``,
prints the table and the notes, and returns the exit status.  Errors are
:mod:`pairforge.errors`: a :class:`~pairforge.errors.UsageError` for inputs that cannot be used
as given (found before any pair is scored), :class:`~pairforge.errors.WorkFailed` when the first
shard read is damaged.  Damage found later ends the run with the pairs scored so far written and
marked partial (``report`` returns 1, or 130 after Ctrl-C).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, fields
from itertools import chain
from pathlib import Path
from typing import Any

from pairforge.errors import UsageError, WorkFailed


@dataclass
class EvalRequest:
    """What to score and how; the fields are ``pairforge eval``'s options (``--sr`` → ``sr`` …)."""

    sr: Path | None = None
    #: generator export folders, published checkpoint files (.pth/.safetensors …) or "bicubic"
    model: list[str] | str | None = None
    hr: Path | None = None
    lr: Path | None = None
    data: str | None = None
    pairs: str | None = None
    preset: str | None = None
    seed: int = 0
    crop_border: int | None = None
    scale: int | None = None
    weights: Path | None = None
    no_fid: bool = False
    dataset_name: str | None = None
    protocol: str | None = None
    out: Path = Path("eval-out")
    #: row names, in the order of the (non-bicubic) models; a model without one is named by its file
    name: list[str] | str | None = None
    save_images: bool = False
    crops: int = 0
    limit: int | None = None
    device: str | None = None
    tile: int | None = None
    overlap: int | None = None
    color_fix: str | None = None

    def __post_init__(self) -> None:
        self.model = [self.model] if isinstance(self.model, (str, Path)) else list(self.model or [])
        self.model = [str(m) for m in self.model]
        self.name = [self.name] if isinstance(self.name, str) else list(self.name or [])
        for name in ("sr", "hr", "lr", "weights", "out"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    @classmethod
    def from_options(cls, options: Any) -> EvalRequest:
        """From any object with these attribute names (an ``argparse.Namespace``)."""
        return cls(**{f.name: getattr(options, f.name) for f in fields(cls)})


def run_eval(req: EvalRequest) -> tuple:
    """Score ``req``; returns what :func:`report` takes after ``req``. Raises the family's errors
    above; nothing is written before every input check passed."""
    mode = eval_mode(req)
    # before anything imports huggingface_hub: pyiqa's metrics (and timm's backbones inside them) come
    # from local files only; a metric that would download is skipped with a note instead
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import StorageError
    from pairforge.training.model.perceptual import PerceptualWeightsMissing

    try:
        return _score(req, mode)
    except ShardIntegrityError as exc:  # damage found in the first shard read, before any pair was scored
        raise WorkFailed(f"{exc}; nothing was scored") from exc
    except PerceptualWeightsMissing as exc:
        raise UsageError(f"LPIPS/DISTS need their real weights: {exc}") from exc
    except StorageError as exc:
        if isinstance(exc, UsageError):  # no credentials
            raise
        raise UsageError(f"{exc} (nothing was scored)") from exc  # a store out of reach before any pair
    except FileNotFoundError as exc:  # a dataset or folder that is not there
        raise UsageError(str(exc)) from exc


def eval_mode(req: EvalRequest) -> str:
    """Which of the documented input combinations was given (sr, lr, data or preset); a
    :class:`UsageError` for any other."""
    if req.sr is not None:
        if req.hr is None or req.model or req.data or req.preset:
            raise UsageError("--sr takes --hr (and optionally --lr), and no --model/--data/--preset")
        return "sr"
    if not req.model:
        raise UsageError("give --sr SR_DIR --hr HR_DIR, or --model EXPORT_DIR|CHECKPOINT|bicubic with its inputs")
    has = {k: getattr(req, k) is not None for k in ("lr", "hr", "data", "preset")}
    combos = {"lr": {"lr", "hr"}, "data": {"data"}, "preset": {"hr", "preset"}}
    given = [mode for mode, keys in combos.items() if {k for k, v in has.items() if v} == keys]
    if len(given) != 1:
        raise UsageError("--model needs exactly one of: --lr LR_DIR --hr HR_DIR | --data DATASET | "
                         "--hr HR_DIR --preset NAME --seed N")
    if req.pairs is not None and given[0] != "data":
        raise UsageError("--pairs applies to --data DATASET only")
    return given[0]


def print_published() -> int:
    from pairforge.training.model.evaluate import markdown_table
    from pairforge.training.model.published import load_published, protocol_note

    rows = load_published()
    for protocol in dict.fromkeys(r.protocol for r in rows):
        for dataset in dict.fromkeys(r.dataset for r in rows if r.protocol == protocol):
            print(f"\n## {dataset}, protocol {protocol}\n{protocol_note(protocol)}\n")
            print(markdown_table([], [r for r in rows if r.protocol == protocol and r.dataset == dataset]))
    return 0


def _pairs(req: EvalRequest, mode: str, selection):
    from pairforge.training.model import evaluate as ev

    if mode == "sr":
        return ev.sr_folder_pairs(req.sr, req.hr, req.lr)
    if mode == "lr":
        return ev.lr_folder_pairs(req.lr, req.hr)
    if mode == "data":
        return ev.dataset_pairs(selection)
    return ev.preset_pairs(req.hr, req.preset, req.seed)


class DatasetUnusable(UsageError):
    """Shards the evaluation would read are missing or not their recorded size (exit 2, before any work)."""


def _select(req: EvalRequest, mode: str):
    """The dataset pairs to score (``--data``), said on stderr, every shard checked to be there with
    its recorded size (one HEAD each) before any pair is scored; None for the other modes."""
    from pairforge.pipeline.storage import redact
    from pairforge.training.model import evaluate as ev

    if mode != "data":
        return None
    selection = ev.select_dataset_pairs(req.data, _export_dir(req), req.pairs)
    problems = ev.missing_shards(selection)
    if problems:
        raise DatasetUnusable(f"{redact(str(req.data))} is not usable as given: {len(problems)} shard(s) missing or "
                              f"not their recorded size: {'; '.join(problems[n] for n in sorted(problems))}")
    ev.warn(selection.summary)
    return selection


def _export_dir(req: EvalRequest) -> Path | None:
    """The pairforge export whose run's record picks the pairs (held-out or not): the first export
    given; published checkpoints have no record here (they trained on their own data)."""
    return next((Path(m) for m in req.model if m != "bicubic" and Path(m).is_dir()), None)


def _pairs_report(selection, result) -> tuple[dict, list[str]]:
    """What metrics.json and the table say about the scored pairs: how many were training pairs
    of the model (or that it cannot tell)."""
    if selection is None:
        return {}, []
    scored = {r["image"]: r.get("training_pair") for r in result.per_image}
    n = len(scored)
    training = None if not selection.known else sum(1 for t in scored.values() if t)
    info = {"selection": selection.choice, "known": selection.known, "scored": n, "training_pairs": training,
            "held_out_pairs": None if training is None else n - training, "run_record": selection.run_json,
            "why": selection.why}
    if training is None:
        line = f"Pairs: {n} scored; cannot tell how many are training pairs: {selection.why}."
    elif training:
        line = (f"Pairs: {n} scored, {training} of them TRAINING pairs of the model ({selection.why}): its rows "
                "measure fit as much as generalisation; --pairs held-out scores only the pairs it never saw.")
    else:
        line = f"Pairs: {n} scored, none of them training pairs of the model ({selection.why})."
    return info, [line]


def _scale(req: EvalRequest, mode: str, first, models: dict) -> int:
    """One scale for the run: the models', the preset's, --scale, or the first pair's sizes; a
    model of another scale than the pairs is refused in one line, naming both."""
    from pairforge.degradations import load_preset
    from pairforge.training.model import evaluate as ev

    claims = {name: model.scale for name, model in models.items()}
    if mode == "preset":
        claims["preset"] = load_preset(req.preset).scale
    if first is not None and first.lr is not None:
        claims["images"] = ev.infer_scale(first)
    claims["--scale"] = req.scale
    known = {k: v for k, v in claims.items() if v is not None}
    if len(set(known.values())) > 1:
        raise ev.EvalError("the scale is ambiguous: " + ", ".join(f"{k} x{v}" for k, v in known.items()))
    return next(iter(known.values()), 4)


def _load_models(req: EvalRequest, device: str) -> dict:
    """Row name → loaded model (:mod:`sr_models`: an export or a published checkpoint), in the
    order given; ``bicubic`` is the bicubic row every run with LR has anyway."""
    from pairforge.training.model.sr_models import load_model

    specs = [m for m in req.model if m != "bicubic"]
    names = req.name if req.sr is None else []
    if len(names) > len(specs):
        raise UsageError(f"--name given {len(names)} times for {len(specs)} model(s)")
    models: dict = {}
    for i, spec in enumerate(specs):
        model = load_model(spec, device, names[i] if i < len(names) else None)
        if model.name in models or model.name == "bicubic":
            raise UsageError(f"two rows would be named {model.name!r} (--model {spec}); name them with --name")
        models[model.name] = model
    return models


def _crop(req: EvalRequest, scale: int, notes: list[str]) -> int:
    if req.crop_border is not None:
        if req.protocol == "stablesr-crops" and req.crop_border != 0:
            notes.append("the stablesr-crops rows were computed by pyiqa with crop_border 0; this run crops "
                         f"{req.crop_border}, so its PSNR/SSIM are not directly comparable")
        return req.crop_border
    if req.protocol == "stablesr-crops":
        notes.append("crop_border 0, as pyiqa computed the stablesr-crops rows (OSEDiff's test_metrics.py)")
        return 0
    return scale


def _published_notes(req: EvalRequest, mode: str, notes: list[str]):
    from pairforge.training.model.published import matching, protocol_note

    if req.dataset_name and not req.protocol:
        notes.append("published rows are printed only with --protocol (stablesr-crops or whole-image): the same "
                     "method scores differently on 512 crops and on whole images")
    if req.protocol and not req.dataset_name:
        notes.append("published rows are printed only with --dataset-name")
    rows = matching(req.dataset_name, req.protocol)
    if rows:
        notes.append(f"published rows ({req.dataset_name}, {req.protocol}): {protocol_note(req.protocol)}")
        if mode == "preset":
            notes.append(f"the LR here are drawn by preset {req.preset} with seed {req.seed}; the papers used their "
                         "own draws of the Real-ESRGAN pipeline: same protocol, different LR pixels")
    return rows


def _score(req: EvalRequest, mode: str):
    """Everything up to the scores: device and data checked first (nothing loads before), then the
    metrics, the methods and the scoring. Returns what :func:`report` reports."""
    from pairforge.training.model import evaluate as ev
    from pairforge.training.model.inference import check_device

    notes: list[str] = []
    device = check_device(req.device)  # DeviceUnavailable (a UsageError): one line, exit 2
    selection = _select(req, mode)
    pairs = iter(_pairs(req, mode, selection))
    first = next(pairs, None)
    if first is None:
        raise ev.EvalError("no images to evaluate")
    models = _load_models(req, device)
    scale = _scale(req, mode, first, models)
    crop = _crop(req, scale, notes)
    published = _published_notes(req, mode, notes)
    scorer = ev.Scorer(crop, device, req.weights)
    methods = _methods(req, mode, scale, models)
    noref = ev.NoReferenceMetrics(device, want_fid=not req.no_fid)
    req.out.mkdir(parents=True, exist_ok=True)
    result = ev.run_evaluation(chain([first], pairs), methods, scorer, req.out, scale=scale, noref=noref,
                               save_images=req.save_images, crops=req.crops, limit=req.limit)
    result.published = published
    settings = _settings(req, mode, scale, crop, device, scorer.backbone_source, list(methods))
    return result, settings, notes, selection


def report(req: EvalRequest, result, settings: dict, notes: list[str], selection, *, as_json: bool = False) -> int:
    """metrics.json, per_image.csv, table.md (also printed), the notes on stderr; the exit status."""
    from pairforge.training.model import evaluate as ev

    settings["images"] = len({r["image"] for r in result.per_image})
    settings["pairs"], footer = _pairs_report(selection, result)
    notes += footer
    doc, table = ev.write_outputs(result, req.out, settings, notes, footer)
    print(json.dumps(doc, separators=(",", ":")) if as_json else table)
    for reason, metrics in _group(result.skipped).items():
        ev.warn(f"skipped {', '.join(metrics)}: {reason}")
    for n in notes:
        if as_json or n not in footer:  # the printed table already ends with its footer
            ev.warn(n)
    files = f"{req.out / 'metrics.json'}, {req.out / 'per_image.csv'} and {req.out / 'table.md'}"
    if result.partial is not None:
        return _stopped_early(result, files)
    print(f"wrote {files}", file=sys.stderr)
    return 0


def _stopped_early(result, files: str) -> int:
    """One line for a run that stopped mid-scoring: what stopped it and what was kept; 130 after
    Ctrl-C, else 1 (the work failed: a shard damaged or a store lost after the checks passed)."""
    p = result.partial
    left_out = f", {p['dropped']} pair(s) of the damaged shard left out" if p.get("dropped") else ""
    interrupted = isinstance(result.failure, KeyboardInterrupt)
    print(f"pairforge eval: {'interrupted' if interrupted else 'error: ' + p['reason']}; wrote the partial results "
          f"({p['pairs_scored']} pair(s) scored{left_out}) to {files}", file=sys.stderr)
    return 130 if interrupted else 1


def _methods(req: EvalRequest, mode: str, scale: int, models: dict) -> dict:
    """Name -> LR→SR function (None: the pair's existing SR), bicubic first whenever there is an LR."""
    from pairforge.training.model import evaluate as ev

    methods: dict = {}
    if mode == "sr":
        methods[(req.name or [None])[0] or req.sr.resolve().name] = None
    options = {"tile": req.tile, "overlap": req.overlap, "color_fix": req.color_fix}
    for name, model in models.items():
        methods[name] = ev.ModelMethod(model, scale, **options)
    if mode != "sr" or req.lr is not None:
        methods = {"bicubic": lambda lr: ev.bicubic_upscale(lr, scale), **methods}
    return methods


def _settings(req: EvalRequest, mode: str, scale: int, crop: int, device: str, backbone: str,
              methods: list[str]) -> dict:
    """What was run, for metrics.json: enough to run it again."""
    options = {k: v for k, v in (("tile", req.tile), ("overlap", req.overlap), ("color_fix", req.color_fix))
               if v is not None}
    return {"mode": mode, "scale": scale, "crop_border": crop, "device": device, "perceptual_backbone": backbone,
            "sr": _s(req.sr), "hr": _s(req.hr), "lr": _s(req.lr), "data": req.data,
            "model": req.model[0] if len(req.model) == 1 else (req.model or None),
            "model_options": options, "preset": req.preset, "seed": req.seed if mode == "preset" else None,
            "dataset_name": req.dataset_name, "protocol": req.protocol, "pairs_option": req.pairs,
            "crops_columns": (["lr (nearest)"] if mode != "sr" or req.lr else []) + methods + ["hr"]}


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _group(skipped: list[dict]) -> dict[str, list[str]]:
    """reason -> the metrics skipped for it (one line per reason on stderr)."""
    out: dict[str, list[str]] = {}
    for s in skipped:
        out.setdefault(s["reason"], []).append(s["metric"])
    return out
