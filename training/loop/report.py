"""The run report: loss curves (PNG), an LR | SR | HR grid (PNG), and report.md/report.html
with validation PSNR/SSIM/LPIPS/DISTS of the generator beside the bicubic baseline, and the
discriminator's accuracy and real−fake logit margin per diffusion-time bucket (on training
batches and on the held-out pairs) beside the losses: a D at chance (accuracy 0.5, margin 0)
means the adversarial term teaches the generator nothing.

Every report states which perceptual backbone produced LPIPS/DISTS (real ImageNet weights,
or a random backbone when the user asked for one).
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from pairforge.training.loop.losses import D_T_BUCKETS, LOW_T_BUCKET, bucket_name

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


def bucket_label(lo: int, hi: int) -> str:
    return f"t∈[{lo},{hi})"


def discriminator_rows(val: list[dict]) -> list[list[str]]:
    """Per validation record: step, then D's accuracy and margin for each t bucket ("–" if absent)."""
    rows = []
    for v in val:
        row = [str(v["step"])]
        for lo, hi in D_T_BUCKETS:
            b = bucket_name(lo, hi)
            acc, margin = v.get(f"d_acc_{b}"), v.get(f"d_margin_{b}")
            row.append("–" if acc is None else f"{acc:.2f} / {margin:+.3f}")
        rows.append(row)
    return rows


def discriminator_table_markdown(val: list[dict]) -> list[str]:
    """The held-out discriminator table (records without D measurements are left out)."""
    val = [v for v in val if f"d_acc_{LOW_T_BUCKET}" in v]
    if not val:
        return []
    header = ["step"] + [f"{bucket_label(lo, hi)} acc / margin" for lo, hi in D_T_BUCKETS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in discriminator_rows(val)]


def discriminator_table_html(val: list[dict]) -> str:
    """The held-out discriminator table as HTML, with one sentence read from its last row: a
    reader should not have to know that 0.5 is chance to see whether the adversarial half works."""
    val = [v for v in val if f"d_acc_{LOW_T_BUCKET}" in v]
    if not val:
        return "<p>No discriminator measurements were logged.</p>"
    header = ["step"] + [f"{bucket_label(lo, hi)} acc / margin" for lo, hi in D_T_BUCKETS]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in discriminator_rows(val))
    acc, margin = val[-1][f"d_acc_{LOW_T_BUCKET}"], val[-1][f"d_margin_{LOW_T_BUCKET}"]
    if acc >= 0.6 and margin > 0:
        verdict = "it tells the model's output from real HR on held-out pairs"
    elif acc <= 0.4 or margin < 0:
        verdict = ("it ranks the model's output above real HR on held-out pairs: it has fitted the training "
                   "pairs, not learned what real looks like")
    else:
        verdict = "it does not yet tell the model's output from real HR on held-out pairs (0.5 is chance)"
    words = (f"<p>At step {val[-1]['step']} the discriminator's patch accuracy at t&nbsp;&lt;&nbsp;100 is "
             f"{acc:.2f} (margin {margin:+.3f}): {html.escape(verdict, quote=False)}.</p>")
    return f"<table border=1><tr>{head}</tr>{rows}</table>{words}"


def _plot_discriminator(ax_acc, ax_margin, metrics: list[dict], val: list[dict]) -> None:
    """Accuracy and margin per t bucket: lines on training batches, markers on held-out pairs."""
    for i, (lo, hi) in enumerate(D_T_BUCKETS):
        b, colour, label = bucket_name(lo, hi), f"C{i}", bucket_label(lo, hi)
        for ax, key in ((ax_acc, f"d_acc_{b}"), (ax_margin, f"d_margin_{b}")):
            tr = [(m["step"], m[key]) for m in metrics if key in m]
            if tr:
                ax.plot(*zip(*tr), color=colour, alpha=0.8, label=f"{label} train")
            va = [(v["step"], v[key]) for v in val if key in v]
            if va:
                ax.plot(*zip(*va), "o--", color=colour, label=f"{label} held-out")
    ax_acc.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax_acc.set(title="discriminator accuracy per t (0.5 = chance)", xlabel="step", ylim=(0, 1))
    ax_margin.axhline(0.0, color="grey", lw=0.8, ls=":")
    ax_margin.set(title="discriminator margin: real − fake logit", xlabel="step")
    for ax in (ax_acc, ax_margin):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")


def plot_losses(metrics: list[dict], val: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(25, 4))
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
    _plot_discriminator(axes[3], axes[4], metrics, val)
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
    d_table = discriminator_table_markdown(val)
    if d_table:
        lines += ["", "## Discriminator on held-out pairs (accuracy / real − fake logit margin; 0.50 is chance)",
                  ""] + d_table
    if metrics:
        m = metrics[-1]
        lines += ["", "## Last logged step", "",
                  f"loss_g {m['loss_g']:.4f}, loss_d {m['loss_d']:.4f}, "
                  f"{m.get('samples_per_s', 0):.1f} samples/s"]
        low = f"d_acc_{LOW_T_BUCKET}"
        if low in m:
            lines.append(f"discriminator on training batches, {bucket_label(*D_T_BUCKETS[0])}: accuracy "
                         f"{m[low]:.2f}, margin {m[f'd_margin_{LOW_T_BUCKET}']:+.3f}")
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
