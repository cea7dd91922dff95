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

Scores: PSNR/SSIM on Y with a border crop (:mod:`pairforge.training.model.metrics`), LPIPS-alex and
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

from pairforge.errors import UsageError
from pairforge.training.model import pixels
from pairforge.training.model.metrics import psnr_y, ssim_y
from pairforge.training.model.published import PublishedRow
from pairforge.training.model.sr_models import export_name

__all__ = ["EvalError", "Pair", "COLUMNS", "NO_REFERENCE", "read_image", "match_folders", "sr_folder_pairs",
           "lr_folder_pairs", "dataset_pairs", "preset_pairs", "bicubic_upscale", "ModelMethod", "Scorer",
           "NoReferenceMetrics", "EvalOutput", "run_evaluation", "markdown_table", "PAIR_CHOICES",
           "TrainingSplit", "training_split", "DataSelection", "select_dataset_pairs", "missing_shards"]

#: the papers' column order: (key, header, format)
COLUMNS = (("psnr_y", "PSNR↑", ".2f"), ("ssim_y", "SSIM↑", ".4f"), ("lpips", "LPIPS↓", ".4f"),
           ("dists", "DISTS↓", ".4f"), ("fid", "FID↓", ".2f"), ("niqe", "NIQE↓", ".3f"),
           ("musiq", "MUSIQ↑", ".2f"), ("maniqa", "MANIQA↑", ".4f"), ("clipiqa", "CLIPIQA↑", ".4f"))
#: no-reference metrics: our key -> pyiqa metric name (MANIQA as the papers report it, PIPAL-trained)
NO_REFERENCE = {"niqe": "niqe", "musiq": "musiq", "maniqa": "maniqa-pipal", "clipiqa": "clipiqa"}
_FULL_REFERENCE = ("psnr_y", "ssim_y", "lpips", "dists")
#: name suffixes that test sets and SR tools add (Canon_001_HR / Canon_001_LR4 / img_x4 / img_SR)
_SUFFIX = re.compile(r"[_\-.]?(hr|gt|lr\d*|lq|sr|x\d+|out|output|result)$", re.IGNORECASE)


class EvalError(UsageError, ValueError):
    """A problem with the user's inputs (missing or mismatched files, wrong sizes), said plainly."""


@dataclass
class Pair:
    name: str
    hr: np.ndarray  # HWC uint8
    lr: np.ndarray | None = None  # HWC uint8, when a method is to run
    sr: np.ndarray | None = None  # HWC uint8, when scoring an existing result
    record: dict | None = None  # the degradation parameters (preset mode)
    shard: str | None = None  # the dataset shard it was read from (dataset mode)
    training: bool | None = None  # whether the model trained on it (dataset mode; None: cannot tell)


# ----------------------------------------------------------------------------- reading
def read_image(path: Path) -> np.ndarray:
    """An image file as HWC uint8 RGB through the one reader (:func:`pixels.read_image`, the
    pixels ``upscale`` and ``synth`` see); EvalError (one line) if unreadable."""
    try:
        return pixels.read_image(path)
    except pixels.UnreadableImage as exc:
        raise EvalError(str(exc)) from None


def _list_images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise EvalError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if pixels.is_image_name(p.name))
    if not files:
        raise EvalError(f"{folder} holds no images ({', '.join(pixels.IMAGE_EXTS)})")
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


def dataset_pairs(url: str | DataSelection) -> Iterator[Pair]:
    """A pairforge dataset's samples: the HR and LR view 0, named by sample key.

    Given a :class:`DataSelection`, only its shards and samples, each pair marked with its shard
    and whether the model trained on it. Every shard is checked against its manifest entry as it
    streams: damage raises :class:`~pairforge.pipeline.ShardIntegrityError` naming the shard.
    """
    from pairforge.pipeline.shards import ShardReader, decode_sample

    selection = url if isinstance(url, DataSelection) else select_dataset_pairs(url, None, "all")
    for source, first in selection.reads:
        with ShardReader(source) as reader:
            for index, raw in enumerate(reader):
                if index < first:
                    continue  # read (and hashed, so the shard is still verified), never decoded
                s = decode_sample(raw)
                if s is None:
                    continue
                yield Pair(str(s["key"]), np.ascontiguousarray(s["hr"]), lr=np.ascontiguousarray(s["lr"][0]),
                           shard=source.name, training=selection.is_training(source.name, index))


# ----------------------------------------------------------------------------- which dataset pairs
#: ``--pairs``: only the pairs the model never trained on, or every pair of the dataset
PAIR_CHOICES = ("held-out", "all")


@dataclass(frozen=True)
class TrainingSplit:
    """What a training run recorded of its data (``split`` in RUN/run.json, written by the trainer):
    the dataset and, per shard, which samples it trained on and which it held out."""
    run_json: Path
    run: str
    data: str
    dataset_id: str | None
    val_data: str | None
    train: tuple[dict, ...]
    held_out: tuple[dict, ...]

    def same_dataset(self, url: str, dataset_id: str | None) -> bool:
        """Whether ``url``/``dataset_id`` is the dataset this run trained on (by id; by URL when
        either side has no id)."""
        if dataset_id and self.dataset_id:
            return dataset_id == self.dataset_id
        return _dataset_base(url) == _dataset_base(self.data)

    def trained_on(self) -> dict[str, int | None]:
        """Shard name -> the index its trained samples end at (None: the whole shard trained)."""
        return {e["name"]: (int(e["end"]) if "end" in e else None) for e in self.train}


def training_split(export_dir: str | Path) -> TrainingSplit | None:
    """The split a training run recorded, when ``export_dir`` is RUN/export of a run whose
    run.json has one (runs from before this record, or an export copied elsewhere: None)."""
    run_json = Path(export_dir).resolve().parent / "run.json"
    try:
        split = json.loads(run_json.read_text()).get("split")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(split, dict) or "train" not in split or "held_out" not in split:
        return None
    return TrainingSplit(run_json, run_json.parent.name, str(split.get("data")), split.get("dataset_id"),
                         split.get("val_data"), tuple(split["train"]), tuple(split["held_out"]))


def _dataset_base(url: str) -> str:
    """A dataset's folder URL (``…/manifest.json`` → ``…``), normalised."""
    from pairforge.pipeline.storage import normalize

    base = normalize(str(url)).rstrip("/")
    return base[: -len("/manifest.json")] if base.endswith("/manifest.json") else base


@dataclass
class DataSelection:
    """The dataset pairs ``eval --data`` scores, and what it knows about the model's training on them.

    ``reads``: (shard, first sample index to score) in order. ``trained``: shard name -> end of its
    trained samples (None: all of them; absent: none), or None when it cannot tell.
    """
    url: str
    choice: str  # "held-out" | "all"
    reads: list[tuple]  # (ShardSource, first)
    trained: dict[str, int | None] | None
    summary: str  # one line for stderr: what is scored
    why: str  # why the training pairs are known / cannot be told
    run_json: str | None = None
    checkable: dict[str, dict] = field(default_factory=dict)  # shard name -> manifest entry (size check)

    @property
    def known(self) -> bool:
        return self.trained is not None

    def is_training(self, shard: str, index: int) -> bool | None:
        if self.trained is None:
            return None
        if shard not in self.trained:
            return False
        end = self.trained[shard]
        return end is None or index < end


def select_dataset_pairs(url: str, export_dir: str | Path | None, choice: str | None) -> DataSelection:
    """Which pairs of the dataset at ``url`` to score for the model at ``export_dir`` (None: bicubic).

    ``choice`` None means held-out when the model's run recorded its split of this dataset, else
    all (the table then says it cannot tell). ``held-out`` where that is not known is an EvalError.
    """
    from pairforge.pipeline.shards import dataset_shard, load_manifest, shard_sources
    from pairforge.pipeline.storage import redact

    if choice not in (None, *PAIR_CHOICES):
        raise EvalError(f"--pairs: expected one of {', '.join(PAIR_CHOICES)}, not {choice!r}")
    if str(url).endswith(".tar") or ("{" in str(url) and ".." in str(url)):  # shards without their manifest
        sources, manifest = shard_sources(url), None
        entries: dict[str, dict] = {}
    else:
        manifest = load_manifest(url)
        entries = {e["name"]: e for e in manifest["shards"]}
        sources = [dataset_shard(url, e) for e in manifest["shards"]]
    shown = redact(str(url))
    all_reads = [(s, 0) for s in sources]
    n_all = f"{sum(int(e['count']) for e in entries.values())} " if entries else ""
    if export_dir is None:
        return DataSelection(str(url), choice or "all", all_reads, {}, f"scoring all {n_all}pairs of {shown}",
                             "bicubic has no training", None, entries)
    split = training_split(export_dir)
    name = export_name(Path(export_dir))
    if split is None:
        why = (f"{export_dir} has no record of what it trained on (RUN/run.json with a data split, written by "
               "`pairforge train`)")
    elif manifest is None:
        why = f"{shown} is shards without their dataset's manifest, so run {name}'s record cannot be matched to it"
    elif split.same_dataset(url, manifest.get("dataset_id")):
        return _own_dataset(str(url), shown, choice, split, name, entries, sources)
    elif split.val_data and _dataset_base(split.val_data) == _dataset_base(url):
        return DataSelection(str(url), choice or "held-out", all_reads, {},
                             f"scoring all {n_all}pairs of {shown}, the validation dataset run {name} never trained on "
                             f"({split.run_json})", f"run {name} validated on this dataset and trained on "
                             f"{split.data}", str(split.run_json), entries)
    else:
        why = (f"run {name} trained on dataset {split.dataset_id or split.data}; this is dataset "
               f"{manifest.get('dataset_id') or shown}, of which it has no record (the two may share source photos)")
    if choice == "held-out":
        raise EvalError(f"--pairs held-out: cannot tell which pairs {name} trained on: {why}; "
                        "pass --pairs all to score every pair (the table then says it cannot tell)")
    return DataSelection(str(url), "all", all_reads, None,
                         f"scoring all {n_all}pairs of {shown}; cannot tell how many are training pairs", why,
                         None if split is None else str(split.run_json), entries)


def _own_dataset(url: str, shown: str, choice: str | None, split: TrainingSplit, name: str,
                 entries: dict[str, dict], sources: list) -> DataSelection:
    """The selection on the dataset the run trained on: its held-out part, or all with the count."""
    by_name = {s.name: s for s in sources}
    trained = split.trained_on()
    missing = sorted(n for n in [*trained, *(e["name"] for e in split.held_out)] if n not in by_name)
    if missing:
        raise EvalError(f"{shown} has no shard(s) {', '.join(missing)} that run {name} recorded "
                        f"({split.run_json}); is this the same dataset?")
    total = sum(int(e["count"]) for e in entries.values())
    n_train = sum((int(t) if t is not None else int(entries[n]["count"])) for n, t in trained.items())
    source = str(split.run_json)
    if choice == "all":
        return DataSelection(url, "all", [(s, 0) for s in sources], trained,
                             f"scoring all {total} pairs of {shown}: {n_train} of them are training pairs of run "
                             f"{name} ({source})", f"as run {name} recorded in {source}", source, entries)
    if not split.held_out:
        val = f", it validated on {split.val_data}" if split.val_data else ", validation was off"
        if choice == "held-out":
            raise EvalError(f"--pairs held-out: run {name} held nothing out of {shown} (it trained on every "
                            f"pair{val}); evaluate it on another dataset, or pass --pairs all to score its training "
                            "pairs")
        return DataSelection(url, "all", [(s, 0) for s in sources], trained,
                             f"scoring all {total} pairs of {shown}, every one a TRAINING pair: run {name} held "
                             f"nothing out of it{val} ({source})", f"as run {name} recorded in {source}",
                             source, entries)
    reads = [(by_name[e["name"]], int(e.get("first", 0))) for e in split.held_out]
    held = {e["name"]: entries[e["name"]] for e in split.held_out}
    n_held = sum(int(e["count"]) for e in split.held_out)
    shards = ", ".join(e["name"] + (f" from sample {e['first']}" if "first" in e else "") for e in split.held_out)
    return DataSelection(url, "held-out", reads, trained,
                         f"scoring the {n_held} held-out pairs of {shown} ({shards}) that run {name} never trained "
                         f"on ({source}); --pairs all scores all {total}, {n_train} of them training pairs",
                         f"as run {name} recorded in {source}", source, held)


def missing_shards(selection: DataSelection) -> dict[str, str]:
    """Shards of the selection that are not there with their recorded size: {name: problem}.

    One HEAD per shard, before any pair is scored (a shard without a manifest entry: is it there).
    """
    from pairforge.pipeline import storage
    from pairforge.pipeline.shards import unconfirmed_shards

    if selection.checkable:
        return unconfirmed_shards(_dataset_base(selection.url), selection.checkable)
    urls = [src.url for src, _ in selection.reads]
    found = storage.sizes(urls)
    return {storage.basename(u): f"{storage.redact(u)} is missing" for u in urls if found[u] is None}


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
    """HWC uint8 → (1, 3, H, W) float32 in [0, 1] (:func:`pixels.to_float`)."""
    return pixels.to_float(img)[None]


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """The generator's own input (:func:`pixels.bicubic_input`), written as 8 bits: the bicubic row."""
    return pixels.to_uint8(pixels.bicubic_input(pixels.to_float(lr), scale))


class ModelMethod:
    """A loaded model (:mod:`pairforge.training.model.sr_models`: an export or a published
    checkpoint) as an LR → SR function on 8-bit arrays.

    ``options`` go to the model's ``upscale`` as given (tile, overlap, colour fix …); what is not
    given keeps the inference defaults, so ``eval`` scores what ``pairforge upscale`` writes.
    """

    def __init__(self, model, scale: int, **options) -> None:
        self.model, self.name, self.scale = model, model.name, scale
        self.options = {k: v for k, v in options.items() if v is not None}

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            sr = self.model.upscale(_to_tensor(lr), self.scale, **self.options)
        return pixels.to_uint8(sr)


# ----------------------------------------------------------------------------- scoring
class Scorer:
    """PSNR/SSIM-Y with a border crop, and LPIPS-alex / DISTS with the real ImageNet weights."""

    def __init__(self, crop: int, device: str = "cpu", weights_dir: str | Path | None = None) -> None:
        from pairforge.training.model.perceptual import DISTS, LPIPS

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

    def refuse(*args, **_kw) -> None:
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
            import pyiqa  # noqa: F401 - imported only to learn whether it can be
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
    def _build(pyiqa, name: str, device: str):
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
    #: set when scoring stopped early: {"reason", "shard", "pairs_scored", "dropped"}; the rows then
    #: cover only the pairs scored before (those of a damaged shard left out)
    partial: dict | None = None
    failure: BaseException | None = None  # what stopped it (the command picks the exit status)


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


def _score_pair(pair: Pair, methods: dict, scorer: Scorer, noref: NoReferenceMetrics | None, out: Path,
                keep: bool, save_images: bool, crop_panel: bool) -> list[dict]:
    """Every method on one pair: its per-image rows (images and crops written as asked)."""
    panels = [] if pair.lr is None else [_nearest_up(pair.lr, pair.hr.shape)]
    where = {} if pair.shard is None else {"shard": pair.shard, "training_pair": pair.training}
    rows = []
    for name, method in methods.items():
        sr = pair.sr if method is None else method(pair.lr)
        if sr.shape != pair.hr.shape:
            raise EvalError(f"{pair.name}: {name} gave {sr.shape[1]}x{sr.shape[0]}, HR is "
                            f"{pair.hr.shape[1]}x{pair.hr.shape[0]}")
        row = {"image": pair.name, "method": name, **where, **scorer(sr, pair.hr)}
        if noref is not None:
            row.update(noref(sr))
        rows.append(row)
        if keep:
            _save_png(sr, out / "images" / name / f"{pair.name}.png")
        panels.append(sr)
    if keep:
        _save_png(pair.hr, out / "images" / "hr" / f"{pair.name}.png")
        if pair.lr is not None and save_images:
            _save_png(pair.lr, out / "images" / "lr" / f"{pair.name}.png")
    if crop_panel:
        _save_png(side_by_side(panels + [pair.hr]), out / "crops" / f"{pair.name}.png")
    return rows


def _stopped(exc: BaseException, per_image: list[dict]) -> dict:
    """What a stop mid-scoring leaves: the damaged shard's rows are dropped (its bytes failed the
    check, so its pairs are not trusted), the rest kept. Mutates ``per_image``."""
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import basename

    shard = basename(exc.shard) if isinstance(exc, ShardIntegrityError) and exc.shard else None
    kept = [r for r in per_image if shard is None or r.get("shard") != shard]
    dropped = len({r["image"] for r in per_image}) - len({r["image"] for r in kept})
    per_image[:] = kept
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
    return {"reason": reason, "shard": shard, "pairs_scored": len({r["image"] for r in kept}), "dropped": dropped}


def run_evaluation(pairs: Iterable[Pair], methods: dict[str, Callable[[np.ndarray], np.ndarray] | None],
                   scorer: Scorer, out: Path, *, scale: int | None, noref: NoReferenceMetrics | None = None,
                   save_images: bool = False, crops: int = 0, limit: int | None = None) -> EvalOutput:
    """Score every method on every pair; write images/crops as asked. ``methods`` maps a name to
    an LR→SR function, or to None for the pair's own ``sr`` (an existing result).

    Data that breaks off mid-way (a damaged shard, a store out of reach) or Ctrl-C stop the scoring
    and return what was scored before, marked ``partial`` (with ``failure`` set), so the command can
    write it instead of losing minutes of work.
    """
    from pairforge.pipeline.shards import ShardIntegrityError
    from pairforge.pipeline.storage import StorageError

    per_image: list[dict] = []
    keep = save_images or (noref is not None and noref.fid is not None)
    records = []
    partial, failure = None, None
    it = iter(pairs)
    i = 0
    try:
        while limit is None or i < limit:
            pair = next(it, None)
            if pair is None:
                break
            if pair.lr is not None:
                pair = fit_hr(pair, scale or infer_scale(pair))
            if pair.record is not None:
                records.append({"image": pair.name, **pair.record})
            per_image += _score_pair(pair, methods, scorer, noref, out, keep, save_images, i < crops)
            i += 1
    except (ShardIntegrityError, StorageError, KeyboardInterrupt) as exc:
        partial, failure = _stopped(exc, per_image), exc
    if not per_image and partial is None:
        raise EvalError("no images to evaluate")
    if records:
        (out / "degradation_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = []
    for name in methods:
        mine = [r for r in per_image if r["method"] == name]
        if not mine:
            continue
        keys = [k for k, _, _ in COLUMNS if k in mine[0]]
        row = {"method": name, **{k: float(np.mean([r[k] for r in mine])) for k in keys}}
        if noref is not None and noref.fid is not None and partial is None:
            row["fid"] = noref.fid_between(out / "images" / name, out / "images" / "hr")
        rows.append(row)
    return EvalOutput(rows, per_image, list(noref.skipped) if noref else [], partial=partial, failure=failure)


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


def write_outputs(result: EvalOutput, out: Path, settings: dict, notes: list[str],
                  footer: list[str] = ()) -> tuple[dict, str]:
    """``metrics.json``, ``per_image.csv`` and ``table.md`` under ``out``; returns (metrics, table).

    ``footer`` lines go under the table (which pairs were scored, a partial run). A partial result
    says so at the top of metrics.json (``partial``) and in the table's first line.
    """
    out.mkdir(parents=True, exist_ok=True)
    doc = {"rows": result.rows, "partial": result.partial, "settings": settings, "skipped": result.skipped,
           "notes": notes,
           "published": [{"method": p.method, "dataset": p.dataset, "protocol": p.protocol, **p.metrics,
                          "source": p.source, "evidence": p.evidence} for p in result.published]}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
    where = [k for k in ("shard", "training_pair") if any(k in r for r in result.per_image)]
    fields = ["image", "method", *where] + [k for k, _, _ in COLUMNS if any(k in r for r in result.per_image)]
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in result.per_image:
            w.writerow({k: (repr(v) if isinstance(v, float) else "" if v is None else v) for k, v in r.items()})
    table = markdown_table(result.rows, result.published)
    if result.partial is not None:
        p = result.partial
        table = (f"PARTIAL: scoring stopped after {p['pairs_scored']} pair(s): {p['reason']}"
                 + (f" ({p['dropped']} pair(s) of {p['shard']} left out)" if p.get("dropped") else "")
                 + "\n\n" + table)
    if footer:
        table += "\n\n" + "\n".join(footer)
    (out / "table.md").write_text(table + "\n")
    return doc, table


def warn(msg: str) -> None:
    print(f"pairforge eval: {msg}", file=sys.stderr)
