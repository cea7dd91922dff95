"""``pairforge inspect``: look at a dataset before training on it.

Answers the questions one has about a synthesized corpus: how big is it, did any shard lose
inputs (and why), what does the degradation parameter distribution actually look like, and do
the LR images look like what the preset promises.  Outputs a text report plus two PNGs
(parameter histograms, HR | LR contact sheet) in a local folder — the dataset itself is never
modified (it may be on S3 and is immutable once its manifest exists).

:func:`verify_dataset` (``pairforge inspect --verify``) answers a different question: is every
shard still exactly what the manifest recorded (size, then sha256 over one streamed read)?
"""
from __future__ import annotations

import itertools
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np

from . import storage
from .shards import ShardIntegrityError, dataset_shard, load_manifest, read_json, read_pairs, stats_name, verify_shard


def human_bytes(n: int) -> str:
    """``12345678`` → ``12.3 MB`` (decimal units, like the demo report)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(d, (list, tuple)) and d and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in d):
        if len(d) <= 4:
            for i, x in enumerate(d):
                out[f"{prefix}[{i}]"] = x
    elif isinstance(d, (bool, str)) or d is None:
        out[prefix] = str(d)
    elif isinstance(d, (int, float)):
        out[prefix] = float(d)
    return out


_SKIP_PARAM = ("key", "seed", "version", "code_version", "config_fingerprint", "format", "hr_size", "in_size")


def collect_params(records: list[dict]) -> dict[str, list]:
    """Per-parameter value lists over all degradation records (one record per LR view)."""
    values: dict[str, list] = defaultdict(list)
    for rec in records:
        for k, v in _flatten(rec).items():
            parts = k.split(".")
            if any(p.split("[")[0] in _SKIP_PARAM for p in parts) or (parts[-1].startswith("size[") and
                                                                      "resize" in parts):
                continue  # identifiers and sizes derived from other parameters
            values[k].append(v)
    return dict(values)


def plot_histograms(values: dict[str, list], path: str, title: str = "") -> int:
    """One panel per parameter that varies (numeric: histogram, categorical: bar chart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = [k for k, v in sorted(values.items()) if len(set(map(str, v))) > 1 or len(values) <= 12]
    keys = keys[:40]
    n = max(1, len(keys))
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, k in zip(axes.flat, keys):
        v = values[k]
        if all(isinstance(x, float) for x in v):
            counts, edges = np.histogram(np.asarray(v, dtype=float), bins=30)
            ax.stairs(counts, edges, fill=True, color="#4477aa")  # one artist instead of 30 bars
            ax.xaxis.set_major_locator(MaxNLocator(4))
        else:
            counts: dict[str, int] = defaultdict(int)
            for x in v:
                counts[str(x)] += 1
            labels = sorted(counts)[:20]
            ax.bar(range(len(labels)), [counts[x] for x in labels], color="#aa7744")
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=30, fontsize=7, ha="right")
        ax.set_title(k, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.yaxis.set_major_locator(MaxNLocator(3, integer=True))  # counts: three ticks read as well as eight
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if not keys:
        axes.flat[0].text(0.5, 0.5, "no parameter records", ha="center")
    fig.suptitle(title or "degradation parameters", fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.06, top=1 - 1.1 / (2.6 * rows), hspace=0.7, wspace=0.25)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return len(keys)


def _caption(rec: dict, limit: int = 3) -> str:
    flat = [(k, v) for k, v in _flatten(rec).items() if k.split(".")[-1] not in _SKIP_PARAM]
    parts = []
    for k, v in flat[:limit]:
        parts.append(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}")
    return " ".join(parts)


def _describe(rec: dict) -> list[str]:
    """Caption lines for one LR view: the engine's own summary when it has one."""
    try:
        from pairforge.degradations import describe_record

        return describe_record(rec).splitlines()
    except Exception:  # noqa: BLE001 - no usable system font: Pillow's built-in one is legible enough - older/other record formats: generic key=value caption
        return [_caption(rec)]


def contact_sheet(samples: list[dict], path: str, cell: int = 256, title: str = "") -> None:
    """Rows of ``HR | LR view 0 | LR view 1 …`` (LR upscaled with nearest neighbour).

    Captions run under the whole row (one block per view), wrapped rather than cut, so every
    parameter of the summary stays readable. ``title`` (e.g. preset and seed) heads the sheet, so
    a picture passed around on its own still says what made it.
    """
    import textwrap

    from PIL import Image, ImageDraw

    views = max((len(s["lr"]) for s in samples), default=1)
    width = (1 + views) * cell
    chars = width // 6
    line_h = 12
    font = _font(10)
    rows = []
    for s in samples:
        recs = s["params"].get("views") or []
        src = s["params"].get("source", {}).get("name", "")
        lines = [f"{s['key']}  ({src})" if src else s["key"]]
        for v, lr in enumerate(s["lr"]):
            desc = _describe(recs[v]) if v < len(recs) else []
            head = f"LR{v} {lr.shape[1]}x{lr.shape[0]}: "
            for i, d in enumerate(desc or [""]):
                lines += textwrap.wrap((head if i == 0 else "    ") + d, chars) or [head]
        rows.append(lines)
    heights = [cell + 6 + line_h * len(lines) for lines in rows]
    head = 22 if title else 0
    sheet = Image.new("RGB", (width, max(1, head + sum(heights))), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), title, fill="black", font=_font(13))
    y = head
    for s, lines, h in zip(samples, rows, heights):
        tiles = [s["hr"], *s["lr"]]
        for c, arr in enumerate(tiles):
            im = Image.fromarray(arr).resize((cell, cell), Image.NEAREST if c else Image.BICUBIC)
            sheet.paste(im, (c * cell, y))
            label = "HR" if c == 0 else f"LR{c - 1}"
            draw.rectangle((c * cell, y, c * cell + 7 * len(label) + 4, y + 13), fill="black")
            draw.text((c * cell + 2, y + 1), label, fill="white", font=font)
        for i, text in enumerate(lines):
            draw.text((2, y + cell + 3 + i * line_h), text, fill="black", font=font)
        y += h
    sheet.save(path)


def _font(size: int):
    """DejaVu Sans from matplotlib (has σ, θ, β, ω); PIL's default bitmap font has no Greek."""
    from PIL import ImageFont

    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except Exception:  # noqa: BLE001 - any reader failure is reported as this shard's problem
        return ImageFont.load_default()


def inspect_dataset(url: str, out_dir: str | None = None, *, samples: int = 8, max_records: int = 2000,
                    storage_options: dict | None = None) -> dict:
    """Build the report for the dataset at ``url``; writes the PNGs to ``out_dir``."""
    man = load_manifest(url, storage_options)
    base = storage.normalize(url)
    if base.endswith("manifest.json"):
        base = base.rsplit("/", 1)[0]
    out_dir = out_dir or os.path.join(os.getcwd(), f"inspect-{man['dataset_id']}")
    os.makedirs(out_dir, exist_ok=True)

    shard_rows = []
    for s in man["shards"]:
        st = read_json(storage.join(base, stats_name(s["name"])), storage_options) or {}
        reasons: dict[str, int] = defaultdict(int)
        for sk in st.get("skipped", []):
            reasons[sk["reason"]] += 1
        shard_rows.append({**s, "wall_s": st.get("timings", {}).get("wall"), "skipped_reasons": dict(reasons),
                           "device": st.get("worker", {}).get("device")})

    records, sheet = [], []
    for s in itertools.islice(read_pairs(base, storage_options=storage_options), max_records):
        if len(sheet) < samples:
            sheet.append(s)
        records.extend(s["params"].get("views", []))
    values = collect_params(records)
    hist_path = os.path.join(out_dir, "params_hist.png")
    n_params = plot_histograms(values, hist_path, f"{man['dataset_id']} — {len(records)} records")
    sheet_path = os.path.join(out_dir, "contact_sheet.png")
    contact_sheet(sheet, sheet_path)
    report = {"dataset_id": man["dataset_id"], "url": base, "totals": man["totals"], "scale": man["scale"],
              "hr_size": man["hr_size"], "views": man["views"], "degradation": man["degradation"],
              "seed": man["seed"], "shards": shard_rows, "records_read": len(records),
              "parameters_plotted": n_params, "histogram_png": hist_path, "contact_sheet_png": sheet_path}
    return report


def format_report(report: dict) -> str:
    """Human-readable text: totals, then the per-shard table."""
    t = report["totals"]
    lines = [
        f"dataset   {report['dataset_id']}",
        f"url       {report['url']}",
        f"preset    {report['degradation']}  scale x{report['scale']}  hr {report['hr_size']}px  "
        f"views {report['views']}  seed {report['seed']}",
        f"totals    {t['samples']} pairs, {t['shards']} shards, {t['bytes'] / 1e6:.1f} MB, "
        f"{t['inputs']} inputs, {t['skipped_inputs']} skipped {t['skipped_by_reason'] or ''}".rstrip(),
        "",
        f"{'shard':<20}{'pairs':>7}{'inputs':>8}{'skipped':>9}{'MB':>9}{'wall s':>9}  sha256",
    ]
    for r in report["shards"]:
        wall = f"{r['wall_s']:.1f}" if r.get("wall_s") is not None else "-"
        lines.append(f"{r['name']:<20}{r['count']:>7}{r['inputs']:>8}{r['skipped']:>9}{r['bytes'] / 1e6:>9.2f}"
                     f"{wall:>9}  {r['sha256'][:16]}")
    lines += ["", f"histograms     {report['histogram_png']}  ({report['parameters_plotted']} parameters, "
                  f"{report['records_read']} records)",
              f"contact sheet  {report['contact_sheet_png']}"]
    return "\n".join(lines)


def verify_dataset(url: str, *, progress: bool = True, storage_options: dict | None = None) -> dict:
    """Check every shard of the dataset at ``url`` against its manifest entry.

    Each shard's size is compared first (a HEAD on S3, so a truncated shard costs no download),
    then its bytes are streamed once through sha256; a tqdm bar on stderr counts the bytes.
    Returns ``{url, shards, bytes, damaged: [ShardIntegrityError.to_dict(), …]}``.
    """
    from tqdm import tqdm

    man = load_manifest(url, storage_options)
    sources = [dataset_shard(url, s) for s in man["shards"]]
    damaged, read = [], 0
    with tqdm(total=man["totals"]["bytes"], unit="B", unit_scale=True, desc="verify", file=sys.stderr,
              disable=not progress) as bar:
        for source in sources:
            try:
                read += verify_shard(source, storage_options, on_bytes=bar.update)
            except ShardIntegrityError as exc:
                damaged.append(exc.to_dict())
    return {"url": storage.redact(storage.normalize(url)), "shards": len(sources), "bytes": read,
            "damaged": damaged}


def format_verify(result: dict) -> str:
    """One line when every shard is intact; otherwise one line per damaged shard and a total."""
    if not result["damaged"]:
        return f"verified {result['shards']} shards, {result['bytes']} bytes"
    lines = [d["message"] for d in result["damaged"]]
    lines.append(f"{len(result['damaged'])} of {result['shards']} shards damaged in {result['url']}")
    return "\n".join(lines)
