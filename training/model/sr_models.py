"""The models ``upscale`` and ``eval`` run: a pairforge generator export, or a published SR
checkpoint (Real-ESRGAN/ESRGAN, Real-ESRGAN's compact net, SwinIR, HAT, …) recognised by spandrel.

Every table in this field puts a new model beside published ones computed on the same pairs;
running each published model through its own project's script would bring its own colour
handling, crops and rounding. Here both kinds go through the same path: the same reader
(:mod:`pixels`), the same tiling and blending (:func:`inference.blend_tiles`), the same colour
fix against the same bicubic input, the same 8-bit rounding and the same scorer.

Published checkpoints are read without unpickling anything: ``.safetensors`` with safetensors,
anything else with ``torch.load(weights_only=True)`` (tensors and plain containers only). The
architecture and its hyper-parameters are recognised from the state dict's keys and shapes by
spandrel's MIT-licensed core (``spandrel``); the non-commercial extras package is not used.
"""
from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Iterator, Protocol

import torch

from pairforge.errors import UsageError
from pairforge.training.model import pixels
from pairforge.training.model.colorfix import apply_color_fix
from pairforge.training.model.inference import blend_tiles, default_overlap, load_generator, upscale_tensor

#: file suffixes taken for a published checkpoint (anything else that is a file is refused)
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


class ModelFileError(UsageError, ValueError):
    """A ``--model`` that is neither a generator export nor a checkpoint of a known SR
    architecture, or one of another scale than asked: one line, exit 2."""


class SRModel(Protocol):
    """What ``upscale`` and ``eval`` need of a model."""

    name: str
    scale: int | None  # None: any (a generator export without a recorded scale)

    def upscale(self, lr: torch.Tensor, scale: int, **options) -> torch.Tensor:
        """(1,3,h,w) in [0,1] → (1,3,h·scale,w·scale) in [0,1], on the CPU."""


# --------------------------------------------------------------------------- a pairforge export
class ExportModel:
    """A generator exported by ``pairforge train`` (``RUN/export``), run by :func:`upscale_tensor`."""

    kind = "pairforge export"

    def __init__(self, export_dir: str | Path, device: str, name: str | None = None):
        self.path = Path(export_dir)
        self.scale = pixels.export_scale(self.path)  # ExportError: the one message for a folder that is no export
        self.name = name or export_name(self.path)
        self.generator = load_generator(self.path, device)

    def upscale(self, lr: torch.Tensor, scale: int, **options) -> torch.Tensor:
        return upscale_tensor(self.generator, lr, scale, **options)


def export_name(export_dir: Path) -> str:
    """``runs/d3sr/export`` → ``d3sr``; any other folder → its own name."""
    p = Path(export_dir).resolve()
    return p.parent.name if p.name == "export" and p.parent.name else p.name


# --------------------------------------------------------------------------- a published checkpoint
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without unpickling code (:class:`ModelFileError`
    for a file that is not one: torch's refusal and a file that is no pickle read alike)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # "pickle protocol N …": torch's notice, not the user's concern
                warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = re.search(r"WeightsUnpickler error: ([^.]*)", str(exc))
        raise ModelFileError(f"{path}: not a checkpoint of plain tensors; torch.load(weights_only=True) refused it "
                             f"({detail.group(1) if detail else 'not a pickle'}); nothing is unpickled") from None
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError, zip/EOF/OS errors: all "not a checkpoint"
        raise ModelFileError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None
    if not isinstance(state, dict) or not state:
        raise ModelFileError(f"{path}: not a state dict (a {type(state).__name__})")
    return state


@contextlib.contextmanager
def _quiet_meshgrid() -> Iterator[None]:
    """SwinIR/HAT call ``torch.meshgrid`` without ``indexing=``: torch's notice asks nothing of the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        yield


class PublishedModel:
    """A published SR checkpoint, recognised and built by spandrel, run on blended tiles."""

    kind = "published checkpoint"

    def __init__(self, path: str | Path, device: str, name: str | None = None):
        import spandrel

        self.path = Path(path)
        state = read_state_dict(self.path)
        try:
            with _quiet_meshgrid():
                desc = spandrel.ModelLoader(device="cpu").load_from_state_dict(state)
        except spandrel.UnsupportedModelError:
            raise ModelFileError(f"{self.path}: no super-resolution architecture that spandrel knows matches "
                                 "this state dict") from None
        except (KeyError, ValueError, RuntimeError) as exc:  # keys of a known family, shapes that do not fit
            raise ModelFileError(f"{self.path}: looks like a known architecture but does not load "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None
        if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.purpose != "SR" or desc.scale < 2:
            raise ModelFileError(f"{self.path}: a {desc.architecture.name} {desc.purpose} model "
                                 f"(×{desc.scale}), not super-resolution")
        if desc.input_channels != 3 or desc.output_channels != 3:
            raise ModelFileError(f"{self.path}: a {desc.input_channels}→{desc.output_channels} channel model; "
                                 "pairforge runs RGB → RGB")
        self.descriptor = desc.to(device).eval()
        self.device = torch.device(device)
        self.scale = int(desc.scale)
        self.architecture = desc.architecture.name
        self.name = name or self.path.stem

    def _stage(self, tiles: torch.Tensor) -> torch.Tensor:
        """A batch of LR tiles through the network, one at a time (spandrel's call takes one image
        and pads it to the architecture's size requirements itself)."""
        with _quiet_meshgrid():
            return torch.cat([self.descriptor(t[None]) for t in tiles])

    @torch.inference_mode()
    def upscale(self, lr: torch.Tensor, scale: int, tile: int = 512, overlap: int | None = None, batch: int = 1,
                color_fix: str = "none", bf16: bool | None = None, **_vae_and_norm_options) -> torch.Tensor:
        """``tile``/``overlap`` in output pixels, as for an export (the network sees ``tile / scale``
        LR pixels); ≤ 0 runs the whole image at once."""
        if scale != self.scale:
            raise ModelFileError(f"{self.path} is a ×{self.scale} model, asked for ×{scale}")
        overlap = default_overlap(tile) if overlap is None else overlap
        x = lr.to(self.device, torch.float32)
        use_bf16 = (self.device.type == "cuda" if bf16 is None else bf16) and self.descriptor.supports_bfloat16
        side = max(x.shape[-2:]) if tile <= 0 else max(1, tile // scale)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            sr = blend_tiles(self._stage, x, side, overlap // scale if tile > 0 else 0, scale, batch)
        sr = apply_color_fix(sr.float().cpu(), pixels.bicubic_input(lr, scale), color_fix)
        return sr.clamp(0, 1)


# --------------------------------------------------------------------------- which one
def load_model(spec: str | Path, device: str, name: str | None = None) -> ExportModel | PublishedModel:
    """A folder is a generator export; a file with a checkpoint suffix a published model;
    anything else :class:`ModelFileError` (one line)."""
    path = Path(spec)
    if path.is_dir():
        return ExportModel(path, device, name)
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return PublishedModel(path, device, name)
    if path.is_file():
        raise ModelFileError(f"{path}: not a model (a generator export folder, or a checkpoint file "
                             f"{'/'.join(CHECKPOINT_SUFFIXES)})")
    raise ModelFileError(f"--model {spec}: no such folder or file")


def check_model_path(spec: str | Path) -> None:
    """The cheap checks of :func:`load_model`, for a command that must refuse bad arguments
    before it loads anything (an export's metadata is read; a checkpoint is only looked at)."""
    path = Path(spec)
    if path.is_dir():
        pixels.export_scale(path)
    elif not path.is_file():
        raise ModelFileError(f"--model {spec}: no such folder or file")
    elif path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ModelFileError(f"{path}: not a model (a generator export folder, or a checkpoint file "
                             f"{'/'.join(CHECKPOINT_SUFFIXES)})")
