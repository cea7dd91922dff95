"""``pairforge eval``: score SR results the way the papers do, beside bicubic and the papers' rows.

Two modes:

- ``pairforge eval --sr SR_DIR --hr HR_DIR [--lr LR_DIR]`` scores existing results (files matched
  by name; with ``--lr`` a bicubic row is added);
- ``pairforge eval --model EXPORT_DIR|CHECKPOINT|bicubic [--model …]`` runs the models (a
  pairforge export, a published checkpoint such as Real-ESRGAN's .pth), and bicubic beside them, on paired
  folders (``--lr --hr``), a pairforge dataset (``--data``) or HR images degraded by a preset
  and seed (``--hr --preset --seed``: reproducible, the DIV2K-val protocol).

Writes ``metrics.json``, ``per_image.csv`` and ``table.md`` under ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval`` on the top-level subparsers."""
    from pairforge.training.model.published import DATASETS, PROTOCOLS

    p = subparsers.add_parser("eval", help="score SR results (PSNR/SSIM-Y, LPIPS, DISTS, …) beside bicubic and the "
                              "papers' numbers", description=__doc__.splitlines()[0].replace("``", ""),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="\n".join(__doc__.splitlines()[2:]))
    src = p.add_argument_group("what to score")
    src.add_argument("--sr", type=Path, help="folder of existing SR results (scored against --hr)")
    src.add_argument("--model", action="append", metavar="MODEL",
                     help="a generator export folder (RUN/export of a training run), a published SR checkpoint "
                          "(.pth/.safetensors of Real-ESRGAN, ESRGAN, SwinIR, HAT, … recognised by spandrel), or "
                          "'bicubic'; give it several times for one table with every model on the same pairs")
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
    o.add_argument("--name", action="append",
                   help="row name of the models, in the order given (default: the run folder's name, or the "
                        "checkpoint file's stem); with --sr, the SR folder's row")
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


def run(args: argparse.Namespace) -> int:
    """Evaluate, write the files, print the table (notes on stderr); :mod:`training.model.eval_job`
    does the work. Exit 2 for inputs that cannot be used as given, found before any pair is scored
    (a missing shard, a device this machine lacks, mismatched folders); 1 when the work fails
    part-way (a shard damaged mid-read: what was scored before is written, marked partial); 130 on
    Ctrl-C.
    """
    from pairforge.training.model.eval_job import EvalRequest, print_published, report, run_eval

    if args.published:
        return print_published()
    req = EvalRequest.from_options(args)
    return report(req, *run_eval(req), as_json=args.json)
