"""The full-size D3SR preset through the real commands, on this machine: train, resume, upscale, eval.

    python bench/full_size_commands.py [--work DIR] [--crop 128] [--ranks-zero 1x2 2x3]     (make full-size)

Writes a random-initialised Stable Diffusion 2.1-base folder in diffusers layout (``vae/``,
``unet/``, ``scheduler/``, from the real configs in bench/full_size.py; only the weights are
random), synthesizes 24 pairs of 128 px from the bundled photos, then runs, as a user would:

* ``pairforge train --preset d3sr-sd21`` for 2 steps per ``RANKSxZERO`` case (fp32 on CPU, batch 1,
  ``--crop`` px, the folder as both pretrained paths);
* on the first case that trained: a resume to step 3, ``pairforge upscale`` and ``pairforge eval``
  with its export.

Per command: exit status, wall time, peak RSS of the largest process and of all of them together
(sampled every 0.5 s), and for training the checkpoint and export sizes. A case that does not fit
in memory shows as killed (-9) with the peak it reached. ``generator.text_embedding=zeros``: the
preset's empty-prompt embedding needs the OpenCLIP tokenizer files, which this tool never
downloads. Nothing is asserted; results go to stdout as a Markdown table (and ``--out FILE``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/full_size.py

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]


def write_sd21_folder(root: Path) -> None:
    """SD2.1-base's VAE, UNet and scheduler with random weights, saved as a download is laid out."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from full_size import SD21_UNET, sd21_vae

    torch.manual_seed(0)
    sd21_vae().save_pretrained(root / "vae")
    UNet2DConditionModel(**SD21_UNET).save_pretrained(root / "unet")
    DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                  prediction_type="epsilon", clip_sample=False, steps_offset=1).save_pretrained(root / "scheduler")


def measured(cmd: list[str], cwd: Path, timeout_s: float) -> dict:
    """Run ``cmd``; wall time, exit status, peak RSS (largest process, whole tree) in GB."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    top = psutil.Process(proc.pid)
    peak_one = peak_all = 0
    while proc.poll() is None and time.perf_counter() - t < timeout_s:
        try:
            rss = [p.memory_info().rss for p in [top, *top.children(recursive=True)]]
        except psutil.Error:
            rss = []
        peak_one, peak_all = max(peak_one, max(rss, default=0)), max(peak_all, sum(rss))
        time.sleep(0.5)
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0]
    died = next((ln for ln in out.splitlines() if "died" in ln or "error" in ln), "")
    return {"rc": proc.returncode, "s": time.perf_counter() - t, "rss_one": peak_one / 1e9,
            "rss_all": peak_all / 1e9, "note": died[:120], "output": out}


def size_gb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e9 if path.exists() else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--crop", type=int, default=128, help="training crop in HR pixels (default 128)")
    ap.add_argument("--cases", nargs="+", default=["1x2", "2x3"], metavar="RANKSxZERO",
                    help="ranks × ZeRO stage per training case (default: 1x2 2x3)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per command (default 900)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="pairforge-full-size-"))
    work.mkdir(parents=True, exist_ok=True)
    models = work / "sd21-random"
    if not (models / "unet").is_dir():
        write_sd21_folder(models)
    synth = subprocess.run([*PAIRFORGE, "synth", "--source", "bundled", "--out", str(work / "ds"), "--preset",
                            "realesrgan-x4plus", "--patch-size", "128", "--patches-per-image", "4", "--views", "1",
                            "--executor", "inline", "--no-progress"], capture_output=True, text=True, check=True)
    data = synth.stdout.strip().splitlines()[-1]
    common = ["--preset", "d3sr-sd21", "--data", data, "--crop-size", str(args.crop), "--batch-size", "1",
              "--workers", "0", "--precision", "fp32", "--val-every", "0",
              "--set", f"generator.pretrained_path={models}", "--set", f"discriminator.pretrained_path={models}",
              "--set", "generator.text_embedding=zeros", "--set", "log.tensorboard=false",
              "--set", "log.image_every=0", "--set", "log.log_every=1"]
    rows, trained = [], None
    for case in args.cases:
        ranks, zero = (int(v) for v in case.lower().split("x"))
        out = work / f"run-{ranks}x{zero}"
        shutil.rmtree(out, ignore_errors=True)
        r = measured([*PAIRFORGE, "train", *common, "--out", str(out), "--steps", "2", "--ranks", str(ranks),
                      "--zero-stage", str(zero)], work, args.timeout)
        extra = f"checkpoints {size_gb(out / 'checkpoints'):.1f} GB, export {size_gb(out / 'export'):.1f} GB"
        rows.append((f"train 2 steps, {ranks} rank(s), ZeRO-{zero}", r, extra if r["rc"] == 0 else r["note"]))
        if r["rc"] == 0 and trained is None:
            trained = (out, ranks, zero)
    if trained is not None:
        out, ranks, zero = trained
        r = measured([*PAIRFORGE, "train", *common, "--out", str(out), "--steps", "3", "--resume", "auto",
                      "--ranks", str(ranks), "--zero-stage", str(zero)], work, args.timeout)
        resumed = "resumed from step00000002" in r["output"]
        rows.append((f"resume to step 3 ({ranks} rank(s), ZeRO-{zero})", r, "resumed" if resumed else r["note"]))
        if not (work / "pairs").is_dir():  # 4 LR/HR pairs as PNG folders, for upscale and eval
            subprocess.run([*PAIRFORGE, "export", data, str(work / "pairs"), "--limit", "4", "--no-progress"],
                           capture_output=True, check=True)
        first_lr = min((work / "pairs" / "lr").glob("*.png"), default=None)
        if first_lr is not None:
            r = measured([*PAIRFORGE, "upscale", str(first_lr), str(work / "up.png"), "--model", str(out / "export"),
                          "--device", "cpu", "--overwrite"], work, args.timeout)
            rows.append(("upscale one LR with the export", r, ""))
            r = measured([*PAIRFORGE, "eval", "--model", str(out / "export"), "--lr", str(work / "pairs" / "lr"),
                          "--hr", str(work / "pairs" / "hr"), "--out", str(work / "eval"), "--device", "cpu",
                          "--no-fid"], work, args.timeout)
            rows.append(("eval the export on 4 pairs", r, ""))
    lines = [f"## d3sr-sd21 (random weights) through the commands, fp32 CPU, {args.crop}² crops, batch 1", "",
             "| command | exit | wall s | peak RSS, largest process GB | peak RSS, all GB | note |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {r['rc']} | {r['s']:.0f} | {r['rss_one']:.1f} | {r['rss_all']:.1f} | {note} |"
              for name, r, note in rows]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    print(f"working folder: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
