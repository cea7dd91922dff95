"""``pairforge eval``: score SR results the way the papers do, beside bicubic and the papers' rows.

Two modes:

- ``pairforge eval --sr SR_DIR --hr HR_DIR [--lr LR_DIR]`` scores existing results (files matched
  by name; with ``--lr`` a bicubic row is added);
- ``pairforge eval --model EXPORT_DIR|bicubic`` runs the model, and bicubic beside it, on paired
  folders (``--lr --hr``), a pairforge dataset (``--data``) or HR images degraded by a preset
  and seed (``--hr --preset --seed``: reproducible, the DIV2K-val protocol).

Writes ``metrics.json``, ``per_image.csv`` and ``table.md`` under ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from itertools import chain
from pathlib import Path

from pairforge.errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the top-level subparsers."""
    from pairforge.training.model.published import DATASETS, PROTOCOLS

    p = subparsers.add_parser("eval", help="score SR results (PSNR/SSIM-Y, LPIPS, DISTS, …) beside bicubic and the "
                              "papers' numbers", description=__doc__.splitlines()[0].replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n".join(__doc__.splitlines()[2:]))
    src = p.add_argument_group("what to score")
    src.add_argument("--sr", type=Path, help="folder of existing SR results (scored against --hr)")
    src.add_argument("--model", help="a generator export folder (DIR/export of a training run), or 'bicubic'")
    src.add_argument("--hr", type=Path, help="folder of HR references")
    src.add_argument("--lr", type=Path, help="folder of LR inputs paired with --hr by name")
    src.add_argument("--data", help="a pairforge dataset (folder, file:// or s3:// URL); LR view 0 of each sample")
    src.add_argument("--pairs", choices=("held-out", "all"), default=None,
                     help="with --data: held-out scores only the pairs the model's run never trained on (RUN/run.json "
                          "records them); all scores every pair and says how many are training pairs. Default: "
                          "held-out when the run's record covers the dataset, else all (the table says it cannot "
                          "tell)")
    src.add_argument("--preset", help="degrade --hr with this degradation preset (name or YAML) …")
    src.add_argument("--seed", type=int, default=0, help="… and this seed (default 0); keys are the file stems")
    m = p.add_argument_group("metrics")
    m.add_argument("--crop-border", type=int, default=None,
                   help="pixels dropped on each side for PSNR/SSIM (default: the scale, 4 at x4; 0 with "
                        "--protocol stablesr-crops, as pyiqa computed those rows)")
    m.add_argument("--scale", type=int, default=None,
                   help="upscaling factor when the export, preset or image sizes do not say (default 4)")
    m.add_argument("--weights", type=Path, default=None, help="perceptual weights folder (default: pairforge's cache)")
    m.add_argument("--no-fid", action="store_true", help="skip FID even when pyiqa and its weights are present")
    pub = p.add_argument_group("published results")
    pub.add_argument("--dataset-name", choices=DATASETS, help="the test set these images are, to print the papers' rows")
    pub.add_argument("--protocol", choices=PROTOCOLS,
                     help="stablesr-crops: StableSR's 512 crops (OSEDiff, AdcSR, …); whole-image: D3SR's")
    pub.add_argument("--published", action="store_true", help="print the table of published results and exit")
    o = p.add_argument_group("output and running")
    o.add_argument("--out", type=Path, default=Path("eval-out"), help="output folder (default eval-out)")
    o.add_argument("--name", help="the model's row name (default: the run folder's name)")
    o.add_argument("--save-images", action="store_true", help="write every SR image (and the LR) under OUT/images/")
    o.add_argument("--crops", type=int, default=0, metavar="N",
                   help="write side-by-side centre crops (LR | methods … | HR) of the first N images to OUT/crops/")
    o.add_argument("--json", action="store_true", help="print metrics.json on one line instead of the table")
    o.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    o.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    o.add_argument("--tile", type=int, default=None, help="model tile side in output pixels (default: as `upscale`)")
    o.add_argument("--overlap", type=int, default=None, help="model tile overlap in output pixels (default: as `upscale`)")
    o.add_argument("--color-fix", default=None, help="colour fix against the bicubic input (default: as `upscale`)")
    return p


def _mode(args: argparse.Namespace) -> str:
    """Which of the documented input combinations was given; SystemExit(2) for any other."""
    if args.sr is not None:
        if args.hr is None or args.model or args.data or args.preset:
            raise _usage("--sr takes --hr (and optionally --lr), and no --model/--data/--preset")
        return "sr"
    if args.model is None:
        raise _usage("give --sr SR_DIR --hr HR_DIR, or --model EXPORT_DIR|bicubic with its inputs")
    has = {k: getattr(args, k) is not None for k in ("lr", "hr", "data", "preset")}
    combos = {"lr": {"lr", "hr"}, "data": {"data"}, "preset": {"hr", "preset"}}
    given = [mode for mode, keys in combos.items() if {k for k, v in has.items() if v} == keys]
    if len(given) != 1:
        raise _usage("--model needs exactly one of: --lr LR_DIR --hr HR_DIR | --data DATASET | "
                     "--hr HR_DIR --preset NAME --seed N")
    if args.pairs is not None and given[0] != "data":
        raise _usage("--pairs applies to --data DATASET only")
    return given[0]


def _usage(msg: str) -> SystemExit:
    print(f"pairforge eval: {msg}", file=sys.stderr)
    return SystemExit(2)


def _print_published() -> int:
    from pairforge.training.model.evaluate import markdown_table
    from pairforge.training.model.published import load_published, protocol_note

    rows = load_published()
    for protocol in dict.fromkeys(r.protocol for r in rows):
        for dataset in dict.fromkeys(r.dataset for r in rows if r.protocol == protocol):
            print(f"\n## {dataset}, protocol {protocol}\n{protocol_note(protocol)}\n")
            print(markdown_table([], [r for r in rows if r.protocol == protocol and r.dataset == dataset]))
    return 0


def _pairs(args: argparse.Namespace, mode: str, selection):
    from pairforge.training.model import evaluate as ev

    if mode == "sr":
        return ev.sr_folder_pairs(args.sr, args.hr, args.lr)
    if mode == "lr":
        return ev.lr_folder_pairs(args.lr, args.hr)
    if mode == "data":
        return ev.dataset_pairs(selection)
    return ev.preset_pairs(args.hr, args.preset, args.seed)


class DatasetUnusable(UsageError):
    """Shards the evaluation would read are missing or not their recorded size (exit 2, before any work)."""


def _select(args: argparse.Namespace, mode: str):
    """The dataset pairs to score (``--data``), said on stderr, every shard checked to be there with
    its recorded size (one HEAD each) before any pair is scored; None for the other modes."""
    from pairforge.pipeline.storage import redact
    from pairforge.training.model import evaluate as ev

    if mode != "data":
        return None
    export = None if args.model == "bicubic" else Path(args.model)
    selection = ev.select_dataset_pairs(args.data, export, args.pairs)
    problems = ev.missing_shards(selection)
    if problems:
        raise DatasetUnusable(f"{redact(str(args.data))} is not usable as given: {len(problems)} shard(s) missing or "
                              f"not their recorded size: {'; '.join(problems[n] for n in sorted(problems))}")
    ev.warn(selection.summary)
    return selection


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


def _scale(args: argparse.Namespace, mode: str, first) -> int:
    """One scale for the run: the export's, the preset's, --scale, or the first pair's sizes."""
    from pairforge.degradations import load_preset
    from pairforge.training.model import evaluate as ev
    from pairforge.training.model.pixels import export_scale

    claims = {}
    if args.model and args.model != "bicubic":
        claims["export"] = export_scale(Path(args.model))  # ExportError (a UsageError): one line, exit 2
    if mode == "preset":
        claims["preset"] = load_preset(args.preset).scale
    if first is not None and first.lr is not None:
        claims["images"] = ev.infer_scale(first)
    claims["--scale"] = args.scale
    known = {k: v for k, v in claims.items() if v is not None}
    if len(set(known.values())) > 1:
        raise ev.EvalError("the scale is ambiguous: " + ", ".join(f"{k} x{v}" for k, v in known.items()))
    return next(iter(known.values()), 4)


def _crop(args: argparse.Namespace, scale: int, notes: list[str]) -> int:
    if args.crop_border is not None:
        if args.protocol == "stablesr-crops" and args.crop_border != 0:
            notes.append("the stablesr-crops rows were computed by pyiqa with crop_border 0; this run crops "
                         f"{args.crop_border}, so its PSNR/SSIM are not directly comparable")
        return args.crop_border
    if args.protocol == "stablesr-crops":
        notes.append("crop_border 0, as pyiqa computed the stablesr-crops rows (OSEDiff's test_metrics.py)")
        return 0
    return scale


def _published_notes(args: argparse.Namespace, mode: str, notes: list[str]):
    from pairforge.training.model.published import matching, protocol_note

    if args.dataset_name and not args.protocol:
        notes.append("published rows are printed only with --protocol (stablesr-crops or whole-image): the same "
                     "method scores differently on 512 crops and on whole images")
    if args.protocol and not args.dataset_name:
        notes.append("published rows are printed only with --dataset-name")
    rows = matching(args.dataset_name, args.protocol)
    if rows:
        notes.append(f"published rows ({args.dataset_name}, {args.protocol}): {protocol_note(args.protocol)}")
        if mode == "preset":
            notes.append(f"the LR here are drawn by preset {args.preset} with seed {args.seed}; the papers used their "
                         "own draws of the Real-ESRGAN pipeline: same protocol, different LR pixels")
    return rows


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the files, print the table (notes on stderr).

    Exit 2 for inputs that cannot be used as given, found before any pair is scored (a missing
    shard, a device this machine lacks, mismatched folders); 1 when the work fails part-way (a
    shard damaged mid-read: what was scored before is written, marked partial); 130 on Ctrl-C.
    """
    if args.published:
        return _print_published()
    mode = _mode(args)
    # before anything imports huggingface_hub: pyiqa's metrics (and timm's backbones inside them) come
    # from local files only; a metric that would download is skipped with a note instead
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pairforge.errors import WorkFailed
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import StorageError
    from pairforge.training.model.perceptual import PerceptualWeightsMissing

    try:
        done = _evaluate(args, mode)
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
    return _write(args, *done)


def _evaluate(args: argparse.Namespace, mode: str):
    """Everything up to the scores: device and data checked first (nothing loads before), then the
    metrics, the methods and the scoring. Returns what :func:`_write` reports."""
    from pairforge.training.model import evaluate as ev
    from pairforge.training.model.inference import check_device

    notes: list[str] = []
    device = check_device(args.device)  # DeviceUnavailable (a UsageError): one line, exit 2
    selection = _select(args, mode)
    pairs = iter(_pairs(args, mode, selection))
    first = next(pairs, None)
    if first is None:
        raise ev.EvalError("no images to evaluate")
    scale = _scale(args, mode, first)
    crop = _crop(args, scale, notes)
    published = _published_notes(args, mode, notes)
    scorer = ev.Scorer(crop, device, args.weights)
    methods = _methods(args, mode, scale, device)
    noref = ev.NoReferenceMetrics(device, want_fid=not args.no_fid)
    args.out.mkdir(parents=True, exist_ok=True)
    result = ev.run_evaluation(chain([first], pairs), methods, scorer, args.out, scale=scale, noref=noref,
                               save_images=args.save_images, crops=args.crops, limit=args.limit)
    result.published = published
    settings = _settings(args, mode, scale, crop, device, scorer.backbone_source, list(methods))
    return result, settings, notes, selection


def _write(args: argparse.Namespace, result, settings: dict, notes: list[str], selection) -> int:
    """metrics.json, per_image.csv, table.md (also printed), the notes on stderr; the exit status."""
    from pairforge.training.model import evaluate as ev

    settings["images"] = len({r["image"] for r in result.per_image})
    settings["pairs"], footer = _pairs_report(selection, result)
    notes += footer
    doc, table = ev.write_outputs(result, args.out, settings, notes, footer)
    print(json.dumps(doc, separators=(",", ":")) if args.json else table)
    for reason, metrics in _group(result.skipped).items():
        ev.warn(f"skipped {', '.join(metrics)}: {reason}")
    for n in notes:
        ev.warn(n)
    files = f"{args.out / 'metrics.json'}, {args.out / 'per_image.csv'} and {args.out / 'table.md'}"
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


def _methods(args: argparse.Namespace, mode: str, scale: int, device: str) -> dict:
    """Name -> LR→SR function (None: the pair's existing SR), bicubic first whenever there is an LR."""
    from pairforge.training.model import evaluate as ev

    methods: dict = {}
    if mode == "sr":
        methods[args.name or args.sr.resolve().name] = None
    elif args.model != "bicubic":
        from pairforge.training.model.inference import default_overlap

        overlap = default_overlap(args.tile) if args.overlap is None and args.tile is not None else args.overlap
        model = ev.ModelMethod(Path(args.model), scale, device, args.name, tile=args.tile, overlap=overlap,
                               color_fix=args.color_fix)
        methods[model.name] = model
    if mode != "sr" or args.lr is not None:
        methods = {"bicubic": lambda lr: ev.bicubic_upscale(lr, scale), **methods}
    return methods


def _settings(args: argparse.Namespace, mode: str, scale: int, crop: int, device: str, backbone: str,
              methods: list[str]) -> dict:
    """What was run, for metrics.json: enough to run it again."""
    options = {k: v for k, v in (("tile", args.tile), ("overlap", args.overlap), ("color_fix", args.color_fix))
               if v is not None}
    return {"mode": mode, "scale": scale, "crop_border": crop, "device": device, "perceptual_backbone": backbone,
            "sr": _s(args.sr), "hr": _s(args.hr), "lr": _s(args.lr), "data": args.data, "model": args.model,
            "model_options": options, "preset": args.preset, "seed": args.seed if mode == "preset" else None,
            "dataset_name": args.dataset_name, "protocol": args.protocol, "pairs_option": args.pairs,
            "crops_columns": (["lr (nearest)"] if mode != "sr" or args.lr else []) + methods + ["hr"]}


def _s(p: Path | None) -> str | None:
    return None if p is None else str(p)


def _group(skipped: list[dict]) -> dict[str, list[str]]:
    """reason -> the metrics skipped for it (one line per reason on stderr)."""
    out: dict[str, list[str]] = {}
    for s in skipped:
        out.setdefault(s["reason"], []).append(s["metric"])
    return out
