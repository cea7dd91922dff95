"""The run report: loss curves (PNG), an LR | SR | HR grid (PNG), and report.md/report.html
with validation PSNR/SSIM/LPIPS/DISTS of the generator beside the bicubic baseline.

Every report states which perceptual backbone produced LPIPS/DISTS (real ImageNet weights,
or a random backbone when the user asked for one).
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path


#: the validation table's columns, with the record key and format of each cell
VALIDATION_COLUMNS = (
    ("step", "step", "{}"),
    ("PSNR SR", "sr_psnr", "{:.2f}"), ("PSNR bicubic", "bicubic_psnr", "{:.2f}"),
    ("SSIM SR", "sr_ssim", "{:.4f}"), ("SSIM bicubic", "bicubic_ssim", "{:.4f}"),
    ("LPIPS SR", "sr_lpips", "{:.4f}"), ("LPIPS bicubic", "bicubic_lpips", "{:.4f}"),
    ("DISTS SR", "sr_dists", "{:.4f}"), ("DISTS bicubic", "bicubic_dists", "{:.4f}"),
)


def validation_rows(val: list[dict]) -> list[list[str]]:
    """One row of formatted cells per validation record (shared by every report)."""
    return [[fmt.format(v[key]) for _, key, fmt in VALIDATION_COLUMNS] for v in val]


def validation_table_markdown(val: list[dict]) -> list[str]:
    header = [name for name, _, _ in VALIDATION_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in validation_rows(val)]


def validation_table_html(val: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _, _ in VALIDATION_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in validation_rows(val))
    return f"<table border=1><tr>{head}</tr>{rows}</table>"


def _held_out_words(run: dict) -> str:
    """How much the run held out for validation: whole shards, or samples of a small dataset."""
    shards, samples = run.get("held_out_shards", 0), run.get("held_out_samples")
    if shards or not samples:
        return f"{shards} shard(s) held out"
    return f"{samples} sample(s) held out, the dataset had too few shards to hold one out"


def used_random_backbone(run: dict) -> bool:
    """True when LPIPS/DISTS came from a random (asked-for) backbone: reports must say so."""
    return any(str(v).startswith("random") for v in run.get("perceptual_backbone", {}).values())


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a torn last line (a killed writer) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def plot_losses(metrics: list[dict], val: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [m["step"] for m in metrics]
    for key in ("loss_g", "mse", "ea_dists", "g_adv"):
        ys = [(m["step"], m[key]) for m in metrics if key in m]
        if ys:
            axes[0].plot(*zip(*ys), label=key)
    axes[0].set(title="generator losses", xlabel="step", yscale="log")
    axes[0].legend()
    axes[1].plot(steps, [m["loss_d"] for m in metrics], label="loss_d")
    axes[1].set(title="discriminator loss", xlabel="step")
    axes[1].legend()
    if val:
        vs = [v["step"] for v in val]
        axes[2].plot(vs, [v["sr_psnr"] for v in val], "o-", label="SR PSNR-Y")
        axes[2].plot(vs, [v["bicubic_psnr"] for v in val], "--", label="bicubic PSNR-Y")
        axes[2].set(ylabel="dB", xlabel="step")
        ax2 = axes[2].twinx()
        ax2.plot(vs, [v["sr_lpips"] for v in val], "s-", color="tab:red", label="SR LPIPS")
        ax2.plot(vs, [v["bicubic_lpips"] for v in val], ":", color="tab:red", label="bicubic LPIPS")
        ax2.set_ylabel("LPIPS (lower is better)")
        axes[2].legend(loc="upper left")
        ax2.legend(loc="lower right")
        axes[2].set_title("validation (held-out pairs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_report(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    metrics = read_jsonl(out / "metrics.jsonl")
    val = read_jsonl(out / "validation.jsonl")
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    plot_losses(metrics, val, out / "loss_curves.png")
    samples = sorted((out / "samples").glob("step*.png")) if (out / "samples").exists() else []
    if samples:
        shutil.copyfile(samples[-1], out / "image_grid.png")
    backbone = run.get("perceptual_backbone", {})
    lines = ["# pairforge training report", ""]
    lines += [f"- data: `{run.get('data', '?')}` ({run.get('train_samples', '?')} training samples in "
              f"{run.get('train_shards', '?')} shards; {_held_out_words(run)})",
              f"- ranks: {run.get('world_size', '?')}, device: {run.get('device', '?')}",
              f"- steps: {metrics[-1]['step'] if metrics else 0}",
              f"- perceptual backbone: {', '.join(f'{k}={v}' for k, v in backbone.items()) or '?'}"]
    if used_random_backbone(run):
        lines.append("- **WARNING: a random (untrained) perceptual backbone was used on request; LPIPS/DISTS "
                     "below are not comparable with published numbers.**")
    lines += ["", "## Validation (held-out pairs, Y-channel PSNR/SSIM)", ""] + validation_table_markdown(val)
    if metrics:
        m = metrics[-1]
        lines += ["", "## Last logged step", "",
                  f"loss_g {m['loss_g']:.4f}, loss_d {m['loss_d']:.4f}, "
                  f"{m.get('samples_per_s', 0):.1f} samples/s"]
    lines += ["", "## Loss curves", "", "![loss curves](loss_curves.png)", ""]
    if samples:
        lines += ["## LR (bicubic ↑) | SR | HR", "", "![LR | SR | HR](image_grid.png)", ""]
    md = "\n".join(lines) + "\n"
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_md_to_html(md))
    return out / "report.md"


def _md_to_html(md: str) -> str:
    """Just enough markdown (headings, bullets, tables, images) for the report."""
    body, in_table = [], False
    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table border=1 cellpadding=4>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            alt, src = line[2:].split("](")
            body.append(f'<p><img src="{html.escape(src[:-1])}" alt="{html.escape(alt)}"></p>')
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:]).replace('**', '')}</li>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    return "<!doctype html><meta charset=utf-8><title>pairforge report</title>\n" + "\n".join(body) + "\n"
