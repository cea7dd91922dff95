"""Score SR results against HR references the way the papers do, for ``pairforge eval``.

Where pairs come from (each yields a name, the HR image and the LR or the finished SR image):

- ``sr_folder_pairs``: an existing SR folder against an HR folder, files matched by name;
- ``lr_folder_pairs``: paired LR/HR folders (RealSR / DRealSR / StableSR test-set layout);
- ``dataset_pairs``: a pairforge dataset (LR view 0 of every sample);
- ``preset_pairs``: HR images degraded by a degradation preset with a fixed seed; each image's
  parameters are drawn from (preset, seed, file stem), so the LR set is the same on every run.

Methods turn an LR image into an SR image: ``bicubic`` (torch bicubic, the generator's own input,
computed on the CPU so it is the same bit for bit everywhere) and an exported generator.
Every SR image is 8-bit before it is scored, as a saved result would be.

Scores: PSNR/SSIM on Y with a border crop (:mod:`pairforge.training.metrics`), LPIPS-alex and
DISTS with the real weights on the whole image (as pyiqa computes them), and, when pyiqa is
installed and its weights are already on this machine, NIQE / MUSIQ / MANIQA / CLIPIQA and FID.
Metrics that cannot run are listed in ``skipped`` with what to install or place where.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pairforge.training.metrics import psnr_y, ssim_y
from pairforge.training.published import PublishedRow

__all__ = ["EvalError", "Pair", "COLUMNS", "NO_REFERENCE", "read_image", "match_folders", "sr_folder_pairs",
           "lr_folder_pairs", "dataset_pairs", "preset_pairs", "bicubic_upscale", "ModelMethod", "Scorer",
           "NoReferenceMetrics", "EvalOutput", "run_evaluation", "markdown_table"]

#: the papers' column order: (key, header, format)
COLUMNS = (("psnr_y", "PSNR↑", ".2f"), ("ssim_y", "SSIM↑", ".4f"), ("lpips", "LPIPS↓", ".4f"),
           ("dists", "DISTS↓", ".4f"), ("fid", "FID↓", ".2f"), ("niqe", "NIQE↓", ".3f"),
           ("musiq", "MUSIQ↑", ".2f"), ("maniqa", "MANIQA↑", ".4f"), ("clipiqa", "CLIPIQA↑", ".4f"))
#: no-reference metrics: our key -> pyiqa metric name (MANIQA as the papers report it, PIPAL-trained)
NO_REFERENCE = {"niqe": "niqe", "musiq": "musiq", "maniqa": "maniqa-pipal", "clipiqa": "clipiqa"}
_FULL_REFERENCE = ("psnr_y", "ssim_y", "lpips", "dists")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm")
#: name suffixes that test sets and SR tools add (Canon_001_HR / Canon_001_LR4 / img_x4 / img_SR)
_SUFFIX = re.compile(r"[_\-.]?(hr|gt|lr\d*|lq|sr|x\d+|out|output|result)$", re.IGNORECASE)


class EvalError(ValueError):
    """A problem with the user's inputs (missing or mismatched files, wrong sizes), said plainly."""


@dataclass
class Pair:
    name: str
    hr: np.ndarray  # HWC uint8
    lr: np.ndarray | None = None  # HWC uint8, when a method is to run
    sr: np.ndarray | None = None  # HWC uint8, when scoring an existing result
    record: dict | None = None  # the degradation parameters (preset mode)


# ----------------------------------------------------------------------------- reading
def read_image(path: Path) -> np.ndarray:
    """An image file as HWC uint8 RGB (EXIF orientation applied); EvalError if unreadable."""
    from pairforge.pipeline.decode import SkipInput, decode_image

    try:
        return decode_image(Path(path).read_bytes())[0]
    except SkipInput as exc:
        raise EvalError(f"cannot read {path}: {exc}") from None


def _list_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise EvalError(f"{folder} holds no images ({', '.join(_IMAGE_EXTS)})")
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise EvalError(f"{folder}: {out[p.stem].name} and {p.name} have the same name")
        out[p.stem] = p
    return out


def _normalized(names: Iterable[str]) -> dict[str, str] | None:
    """stem -> stem without a test-set suffix; None when two stems would collide."""
    out = {n: _SUFFIX.sub("", n) for n in names}
    return out if len(set(out.values())) == len(out) else None


def match_folders(a: Path, b: Path, a_label: str = "SR", b_label: str = "HR") -> list[tuple[str, Path, Path]]:
    """Pair the images of two folders by file name (extension ignored).

    Exact stems first; failing that, stems without a test-set suffix (``_HR``, ``_LR4``, ``_x4``,
    ``_SR`` …), so RealSR's ``Canon_001_HR.png`` meets ``Canon_001_LR4.png``. Every file must find
    its partner: an EvalError lists what is missing on each side.
    """
    fa, fb = _list_images(Path(a)), _list_images(Path(b))
    if set(fa) == set(fb):
        return [(k, fa[k], fb[k]) for k in sorted(fa)]
    na, nb = _normalized(fa), _normalized(fb)
    use_suffixless = bool(na and nb and len(set(na.values()) & set(nb.values())) > len(set(fa) & set(fb)))
    if use_suffixless:
        ka, kb = {na[k]: p for k, p in fa.items()}, {nb[k]: p for k, p in fb.items()}
        if set(ka) == set(kb):
            return [(k, ka[k], kb[k]) for k in sorted(ka)]
    else:
        ka, kb = fa, fb
    only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))

    def show(names: list[str], files: dict[str, Path]) -> str:
        more = f" (+{len(names) - 10} more)" if len(names) > 10 else ""
        return ", ".join(files[n].name for n in names[:10]) + more

    lines = [f"the {a_label} folder {a} and the {b_label} folder {b} do not hold the same images:"]
    if only_b:
        lines.append(f"  no {a_label} image for {len(only_b)} {b_label} image(s): {show(only_b, kb)}")
    if only_a:
        lines.append(f"  no {b_label} image for {len(only_a)} {a_label} image(s): {show(only_a, ka)}")
    raise EvalError("\n".join(lines))


# ----------------------------------------------------------------------------- pair sources
def sr_folder_pairs(sr_dir: Path, hr_dir: Path, lr_dir: Path | None = None) -> Iterator[Pair]:
    """Existing SR results against HR (and the LR, for a bicubic row beside them)."""
    pairs = match_folders(sr_dir, hr_dir, "SR", "HR")
    lr_of = {hr: lr for _, hr, lr in match_folders(hr_dir, lr_dir, "HR", "LR")} if lr_dir else {}
    for name, sr_path, hr_path in pairs:
        sr, hr = read_image(sr_path), read_image(hr_path)
        if sr.shape != hr.shape:
            raise EvalError(f"{sr_path.name}: SR is {sr.shape[1]}x{sr.shape[0]} but HR {hr_path.name} is "
                            f"{hr.shape[1]}x{hr.shape[0]}; crop or regenerate so the sizes match")
        yield Pair(name, hr, lr=read_image(lr_of[hr_path]) if lr_dir else None, sr=sr)


def lr_folder_pairs(lr_dir: Path, hr_dir: Path) -> Iterator[Pair]:
    """Paired LR/HR folders, matched by name."""
    for name, lr_path, hr_path in match_folders(lr_dir, hr_dir, "LR", "HR"):
        yield Pair(name, read_image(hr_path), lr=read_image(lr_path))


def dataset_pairs(url: str) -> Iterator[Pair]:
    """A pairforge dataset's samples: the HR and LR view 0, named by sample key."""
    from pairforge.pipeline import read_pairs

    for s in read_pairs(url):
        yield Pair(str(s["key"]), np.ascontiguousarray(s["hr"]), lr=np.ascontiguousarray(s["lr"][0]))


def preset_pairs(hr_dir: Path, preset: str, seed: int) -> Iterator[Pair]:
    """HR images degraded by ``preset`` with ``seed``; each image's key is its file stem.

    The HR is cropped (bottom/right) to a multiple of the preset's scale first. Degradation runs
    on the CPU, where a (preset, seed, key) gives the same LR pixels on every run.
    """
    from pairforge.degradations import Degrader, load_preset

    cfg = load_preset(preset)
    deg = Degrader(cfg, device="cpu")
    for stem, path in sorted(_list_images(Path(hr_dir)).items()):
        hr = read_image(path)
        h, w = hr.shape[0] - hr.shape[0] % cfg.scale, hr.shape[1] - hr.shape[1] % cfg.scale
        hr = np.ascontiguousarray(hr[:h, :w])
        try:
            lr, records = deg(torch.from_numpy(hr).permute(2, 0, 1)[None].contiguous(), keys=[stem], seed=seed)
        except ValueError as exc:
            raise EvalError(f"{path.name}: {exc}") from None
        yield Pair(stem, hr, lr=lr[0].permute(1, 2, 0).numpy(), record=records[0])


def fit_hr(pair: Pair, scale: int) -> Pair:
    """Crop the HR (and an SR result) bottom/right to LR × scale, BasicSR's mod-crop; EvalError if
    the sizes disagree by more."""
    assert pair.lr is not None
    (h, w), (H, W) = pair.lr.shape[:2], pair.hr.shape[:2]
    if not (h * scale <= H < (h + 1) * scale and w * scale <= W < (w + 1) * scale):
        raise EvalError(f"{pair.name}: HR is {W}x{H} but LR is {w}x{h}, not a x{scale} pair")
    if (H, W) != (h * scale, w * scale):  # an existing SR result is cropped the same way
        pair.hr = np.ascontiguousarray(pair.hr[: h * scale, : w * scale])
        if pair.sr is not None:
            pair.sr = np.ascontiguousarray(pair.sr[: h * scale, : w * scale])
    return pair


def infer_scale(pair: Pair) -> int:
    """The integer factor between a pair's HR and LR heights."""
    assert pair.lr is not None
    scale = pair.hr.shape[0] // pair.lr.shape[0]
    if scale < 1:
        raise EvalError(f"{pair.name}: the LR is larger than the HR")
    return scale


# ----------------------------------------------------------------------------- methods
def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC uint8 → (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1)[None].float() / 255


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] → HWC uint8, rounded as :func:`pairforge.training.metrics.quantize`."""
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """torch bicubic (a = −0.75, align_corners=False, clamped), on the CPU in float32: the
    generator's input. Not MATLAB's ``imresize`` (antialiased, a = −0.5), so papers' bicubic rows
    computed with MATLAB differ slightly."""
    h, w = lr.shape[:2]
    up = F.interpolate(_to_tensor(lr), size=(h * scale, w * scale), mode="bicubic", align_corners=False)
    return _to_uint8(up)


class ModelMethod:
    """An exported generator, run through the inference module's tiled ``upscale_tensor``.

    ``options`` go to ``upscale_tensor`` as given (tile, overlap, color fix …); what is not given
    keeps the inference module's defaults, so ``eval`` scores what ``pairforge upscale`` writes.
    """

    def __init__(self, export_dir: Path, scale: int, device: str, name: str | None = None, **options) -> None:
        from pairforge.training import inference

        self.export_dir = Path(export_dir)
        self.name = name or model_name(self.export_dir)
        self.scale = scale
        self.options = {k: v for k, v in options.items() if v is not None}
        self._upscale = inference.upscale_tensor
        self.generator = inference.load_generator(self.export_dir, device)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            sr = self._upscale(self.generator, _to_tensor(lr), self.scale, **self.options)
        return _to_uint8(sr)


def model_name(export_dir: Path) -> str:
    """``runs/d3sr/export`` → ``d3sr``; any other folder → its own name."""
    p = Path(export_dir).resolve()
    return p.parent.name if p.name == "export" and p.parent.name else p.name


def export_scale(export_dir: Path) -> int | None:
    """The upscaling factor an export records in ``pairforge_generator.json``, if it records one."""
    meta_path = Path(export_dir) / "pairforge_generator.json"
    if not meta_path.exists():
        raise EvalError(f"{export_dir} is not a pairforge generator export (no pairforge_generator.json)")
    scale = json.loads(meta_path.read_text()).get("scale")
    return int(scale) if scale is not None else None


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """PSNR/SSIM-Y with a border crop, and LPIPS-alex / DISTS with the real ImageNet weights."""

    def __init__(self, crop: int, device: str = "cpu", weights_dir: str | Path | None = None) -> None:
        from pairforge.training.perceptual import DISTS, LPIPS

        self.crop = crop
        self.device = torch.device(device)
        self.lpips = LPIPS("alex", weights_dir=weights_dir).to(self.device)
        self.dists = DISTS(weights_dir=weights_dir).to(self.device)
        self.backbone_source = self.dists.backbone_source

    @torch.no_grad()
    def __call__(self, sr: np.ndarray, hr: np.ndarray) -> dict[str, float]:
        x, y = _to_tensor(sr), _to_tensor(hr)
        out = {"psnr_y": float(psnr_y(x, y, self.crop)[0]), "ssim_y": float(ssim_y(x, y, self.crop)[0])}
        x, y = x.to(self.device), y.to(self.device)
        out["lpips"] = float(self.lpips(x, y)[0])
        out["dists"] = float(self.dists(x, y)[0])
        return out


class _NetworkRefused(OSError):
    pass


@contextlib.contextmanager
def _no_network() -> Iterator[None]:
    """While building pyiqa metrics: name lookups and connections fail at once, so nothing is
    downloaded and nothing waits on retries."""
    real = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refuse(*args, **_kw) -> None:  # noqa: ANN002, ANN003
        raise _NetworkRefused(f"network disabled while loading metrics (tried {args[-1]!r})")

    socket.socket.connect = socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = real  # type: ignore[method-assign]


def _pyiqa_cache() -> str:
    return str(Path(torch.hub.get_dir()) / "pyiqa")


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - only for a message
        return "~/.cache/huggingface/hub"


def _missing_note(metric: str, printed: str, exc: BaseException) -> str:
    """What to place where for ``metric``: the files pyiqa said it would download, else its caches."""
    if isinstance(exc, ImportError):
        return f"pyiqa's {metric} cannot be imported here ({type(exc).__name__}: {exc}); install what it needs"
    wanted = re.findall(r'Downloading:?\s*"?(\S+?)"?\s+to\s+(\S+)', printed)
    if wanted:
        files = "; ".join(f"{url} -> {path}" for url, path in wanted)
        return f"pyiqa's {metric} weights are not on this machine: place {files}"
    return (f"pyiqa could not build {metric} from files on this machine ({type(exc).__name__}: {str(exc)[:120]}); "
            f"run pyiqa.create_metric({metric!r}) once where there is network, then copy {_pyiqa_cache()}, "
            f"{torch.hub.get_dir()}/clip and the Hugging Face cache {_hf_cache()} here")


class NoReferenceMetrics:
    """pyiqa's NIQE/MUSIQ/MANIQA/CLIPIQA and FID, only from weights already on this machine.

    pyiqa is optional (not a pairforge dependency). Each metric is built with network access
    refused; one that would download is skipped, with the file and place pyiqa wanted.
    """

    def __init__(self, device: str = "cpu", want_fid: bool = True) -> None:
        self.metrics: dict[str, Callable] = {}
        self.fid: Callable | None = None
        self.skipped: list[dict[str, str]] = []
        wanted = [*NO_REFERENCE, *(["fid"] if want_fid else [])]
        try:
            import pyiqa  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - not installed, or broken: either way skipped
            reason = (f"pyiqa is not importable ({type(exc).__name__}: {exc}); `pip install pyiqa`, then put its "
                      f"weights in {_pyiqa_cache()} (pyiqa names each file on first use)")
            self.skipped = [{"metric": m, "reason": reason} for m in wanted]
            return
        for key in wanted:
            metric = self._build(pyiqa, NO_REFERENCE.get(key, key), device)
            if isinstance(metric, str):
                self.skipped.append({"metric": key, "reason": metric})
            elif key == "fid":
                self.fid = metric
            else:
                self.metrics[key] = metric

    @staticmethod
    def _build(pyiqa, name: str, device: str):  # noqa: ANN001, ANN205
        printed = io.StringIO()
        try:
            with _no_network(), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                return pyiqa.create_metric(name, device=torch.device(device))
        except Exception as exc:  # noqa: BLE001 - any failure to build means: not available here
            return _missing_note(name, printed.getvalue(), exc)

    @torch.no_grad()
    def __call__(self, sr: np.ndarray) -> dict[str, float]:
        x = _to_tensor(sr)
        return {k: float(m(x).flatten()[0]) for k, m in self.metrics.items()}

    def fid_between(self, sr_dir: Path, hr_dir: Path) -> float | None:
        return None if self.fid is None else float(self.fid(str(sr_dir), str(hr_dir)))


# ----------------------------------------------------------------------------- running
@dataclass
class EvalOutput:
    rows: list[dict]  # one per method, the means (and FID)
    per_image: list[dict]
    skipped: list[dict]
    published: list[PublishedRow] = field(default_factory=list)


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def side_by_side(panels: list[np.ndarray], size: int = 192, gap: int = 4) -> np.ndarray:
    """The same centre crop of each image, left to right, on a white strip."""
    h, w = panels[-1].shape[:2]
    c = min(size, h, w)
    top, left = (h - c) // 2, (w - c) // 2
    out = np.full((c, len(panels) * (c + gap) - gap, 3), 255, np.uint8)
    for i, p in enumerate(panels):
        out[:, i * (c + gap): i * (c + gap) + c] = p[top:top + c, left:left + c]
    return out


def _nearest_up(lr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    ys = np.minimum(np.arange(shape[0]) * lr.shape[0] // shape[0], lr.shape[0] - 1)
    xs = np.minimum(np.arange(shape[1]) * lr.shape[1] // shape[1], lr.shape[1] - 1)
    return lr[ys][:, xs]


def run_evaluation(pairs: Iterable[Pair], methods: dict[str, Callable[[np.ndarray], np.ndarray] | None],
                   scorer: Scorer, out: Path, *, scale: int | None, noref: NoReferenceMetrics | None = None,
                   save_images: bool = False, crops: int = 0, limit: int | None = None) -> EvalOutput:
    """Score every method on every pair; write images/crops as asked. ``methods`` maps a name to
    an LR→SR function, or to None for the pair's own ``sr`` (an existing result)."""
    per_image: list[dict] = []
    keep = save_images or (noref is not None and noref.fid is not None)
    records = []
    for i, pair in enumerate(pairs):
        if limit is not None and i >= limit:
            break
        if pair.lr is not None:
            pair = fit_hr(pair, scale or infer_scale(pair))
        if pair.record is not None:
            records.append({"image": pair.name, **pair.record})
        panels = [] if pair.lr is None else [_nearest_up(pair.lr, pair.hr.shape)]
        for name, method in methods.items():
            sr = pair.sr if method is None else method(pair.lr)
            if sr.shape != pair.hr.shape:
                raise EvalError(f"{pair.name}: {name} gave {sr.shape[1]}x{sr.shape[0]}, HR is "
                                f"{pair.hr.shape[1]}x{pair.hr.shape[0]}")
            row = {"image": pair.name, "method": name, **scorer(sr, pair.hr)}
            if noref is not None:
                row.update(noref(sr))
            per_image.append(row)
            if keep:
                _save_png(sr, out / "images" / name / f"{pair.name}.png")
            panels.append(sr)
        if keep:
            _save_png(pair.hr, out / "images" / "hr" / f"{pair.name}.png")
            if pair.lr is not None and save_images:
                _save_png(pair.lr, out / "images" / "lr" / f"{pair.name}.png")
        if i < crops:
            _save_png(side_by_side(panels + [pair.hr]), out / "crops" / f"{pair.name}.png")
    if not per_image:
        raise EvalError("no images to evaluate")
    if records:
        (out / "degradation_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = []
    for name in methods:
        mine = [r for r in per_image if r["method"] == name]
        keys = [k for k, _, _ in COLUMNS if k in mine[0]]
        row = {"method": name, **{k: float(np.mean([r[k] for r in mine])) for k in keys}}
        if noref is not None and noref.fid is not None:
            row["fid"] = noref.fid_between(out / "images" / name, out / "images" / "hr")
        rows.append(row)
    return EvalOutput(rows, per_image, list(noref.skipped) if noref else [])


def _cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown_table(rows: list[dict], published: list[PublishedRow] = ()) -> str:
    """Own rows, then the matching published rows (marked, with a numbered source list)."""
    header = "| Method | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(_cell(r.get(k), f) for k, _, f in COLUMNS) + " |")
    for i, p in enumerate(published, 1):
        mark = "†" if p.evidence == "second-hand" else ""
        lines.append(f"| {p.method} [{i}]{mark} | " + " | ".join(_cell(p.metrics.get(k), f) for k, _, f in COLUMNS)
                     + " |")
    if published:
        lines.append("")
        lines += [f"[{i}] {p.source}" for i, p in enumerate(published, 1)]
        if any(p.evidence == "second-hand" for p in published):
            lines.append("† second-hand: from a third-party summary, not checked against the paper")
    return "\n".join(lines)


def write_outputs(result: EvalOutput, out: Path, settings: dict, notes: list[str]) -> tuple[dict, str]:
    """``metrics.json``, ``per_image.csv`` and ``table.md`` under ``out``; returns (metrics, table)."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"rows": result.rows, "settings": settings, "skipped": result.skipped, "notes": notes,
           "published": [{"method": p.method, "dataset": p.dataset, "protocol": p.protocol, **p.metrics,
                          "source": p.source, "evidence": p.evidence} for p in result.published]}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    fields = ["image", "method"] + [k for k, _, _ in COLUMNS if any(k in r for r in result.per_image)]
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result.per_image:
            w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
    table = markdown_table(result.rows, result.published)
    (out / "table.md").write_text(table + "\n")
    return doc, table


def warn(msg: str) -> None:
    print(f"pairforge eval: {msg}", file=sys.stderr)
