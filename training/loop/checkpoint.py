"""Checkpoints: both engines, the step, the data position and every rank's RNG state.

Layout under ``DIR/checkpoints/``::

    G/<tag>/...              generator engine (DeepSpeed: module + ZeRO optimizer partitions)
    D/<tag>/...              discriminator engine (separate dir: DeepSpeed's file names collide)
    state/<tag>/state.json   step, batches consumed per rank, world size, workers, config/dataset ids,
                             and the size of every file of the checkpoint: the checkpoint's
                             completion marker, written (atomically, by rank 0) once every rank
                             finished writing
    state/<tag>/rank{r}.safetensors   that rank's torch RNG + training-noise generator states
    latest.json              {"tag", "step"}: the newest checkpoint, written after its marker
    damaged/<tag>/           checkpoints a resume found damaged, moved out of the way

**Resume takes the newest intact checkpoint.** A checkpoint is intact when its marker reads and
every file it lists is there with the size it was written with: a save that was killed (no
marker) or a file truncated afterwards (a full disk, a copy cut short) is skipped with a warning
naming it and saying which checkpoint is used instead. Every rank checks, and all ranks agree on
the newest checkpoint that is intact for all of them (one all-reduce per candidate).

Loading never unpickles arbitrary objects: DeepSpeed's checkpoint engine is swapped for one
that calls ``torch.load(weights_only=True)`` with an explicit allowlist of the few DeepSpeed
types its state files contain; our own files are JSON and safetensors.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

TAG_FMT = "step{:08d}"
#: a checkpoint's completion marker, inside ``state/<tag>/``
MARKER = "state.json"
ENGINE_DIRS = ("G", "D")
DAMAGED_DIR = "damaged"


# --------------------------------------------------------------------------- safe loading
def _allowed_globals() -> list:
    allowed = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        allowed += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
        allowed.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address
        allowed.append(fragment_address)
    except ImportError:
        pass
    import argparse
    import collections
    allowed += [collections.OrderedDict, set, argparse.Namespace]
    return allowed


def safe_torch_load(path: str | os.PathLike, map_location=None):
    with torch.serialization.safe_globals(_allowed_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _safe_engine_class():
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""

        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location)

    return TorchCheckpointEngine, SafeTorchCheckpointEngine


def install_safe_checkpoint_engine(engine) -> None:
    """Make ``engine.load_checkpoint`` use weights_only loading.

    DeepSpeed has no option for it: its ``TorchCheckpointEngine.load`` calls
    ``torch.load(weights_only=False)``. Every load goes through the engine's public
    ``checkpoint_engine`` attribute (read at call time), so we replace that attribute with a
    subclass whose ``load`` is safe. Checked against DeepSpeed 0.19.8;
    tests/test_training_checkpoint_safety.py fails if a DeepSpeed update bypasses it.
    Non-torch engines (Nebula, async writers) are left alone: they are opt-in by config.
    """
    torch_engine, safe_engine = _safe_engine_class()
    current = getattr(engine, "checkpoint_engine", None)
    if type(current) is torch_engine:
        safe = safe_engine.__new__(safe_engine)
        safe.__dict__.update(current.__dict__)  # same settings (serialization flavour, name)
        engine.checkpoint_engine = safe


# --------------------------------------------------------------------------- helpers
def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state(noise_gen: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state(), "noise": noise_gen.get_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor], noise_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch_cpu"])
    noise_gen.set_state(state["noise"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


def latest(ckpt_dir: str | os.PathLike) -> dict | None:
    """``latest.json`` as written (the newest checkpoint saved), or None; a torn file raises
    ValueError. It says what was saved last, not whether that checkpoint is intact: resume
    through :func:`choose_resumable`."""
    p = Path(ckpt_dir) / "latest.json"
    return json.loads(p.read_text()) if p.exists() else None


# --------------------------------------------------------------------------- which checkpoint
@dataclass(frozen=True)
class Candidate:
    """One checkpoint found under ``checkpoints/``; ``problem`` says why it cannot be resumed."""

    tag: str
    step: int
    problem: str | None = None


def _step_of(tag: str) -> int | None:
    return int(tag[4:]) if tag.startswith("step") and tag[4:].isdigit() else None


def checkpoint_files(root: Path, tag: str) -> dict[str, int]:
    """``{path relative to checkpoints/: size}`` of every file of checkpoint ``tag`` but its marker."""
    files = {}
    for base in [root / sub / tag for sub in ENGINE_DIRS] + [root / "state" / tag]:
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.name != MARKER and ".tmp" not in path.name:
                files[path.relative_to(root).as_posix()] = path.stat().st_size
    return files


def check_checkpoint(root: str | os.PathLike, tag: str) -> str | None:
    """None when checkpoint ``tag`` is intact (marker present, every file at its written size),
    else what is wrong with it, in words."""
    root = Path(root)
    marker = root / "state" / tag / MARKER
    try:
        state = json.loads(marker.read_text())
    except FileNotFoundError:
        return f"it has no completion marker ({marker.relative_to(root)}): its save did not finish"
    except (OSError, ValueError) as exc:
        return f"its completion marker {marker.relative_to(root)} is unreadable ({exc})"
    for rel, size in state.get("files", {}).items():  # checkpoints written before sizes were recorded: none
        try:
            actual = (root / rel).stat().st_size
        except FileNotFoundError:
            return f"{rel} is missing"
        if actual != size:
            return f"{rel} is {actual} bytes, {size} when it was written"
    return None


def candidates(ckpt_dir: str | os.PathLike) -> list[Candidate]:
    """Every checkpoint under ``ckpt_dir`` (a marker or an engine folder), newest first."""
    root = Path(ckpt_dir)
    tags = set()
    for sub in ("state", *ENGINE_DIRS):
        if (root / sub).is_dir():
            tags |= {p.name for p in (root / sub).iterdir() if p.is_dir() and _step_of(p.name) is not None}
    found = [Candidate(tag, _step_of(tag), check_checkpoint(root, tag)) for tag in tags]
    return sorted(found, key=lambda c: c.step, reverse=True)


def newest_intact(ckpt_dir: str | os.PathLike) -> Candidate | None:
    """The newest checkpoint this process finds intact (no agreement with other ranks)."""
    return next((c for c in candidates(ckpt_dir) if c.problem is None), None)


def recorded_world_size(ckpt_dir: str | os.PathLike) -> tuple[int, int] | None:
    """``(world size, step)`` of the newest intact checkpoint, or None when there is none.

    Read before any rank starts: a ZeRO checkpoint is partitioned per rank, so resuming it
    needs the rank count it was written with.
    """
    found = newest_intact(ckpt_dir)
    if found is None:
        return None
    state = json.loads((Path(ckpt_dir) / "state" / found.tag / MARKER).read_text())
    world = state.get("world")
    return (int(world), found.step) if world is not None else None


def _min_over_ranks(value: int, device) -> int:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


@dataclass(frozen=True)
class Choice:
    """The checkpoint to resume (None: start from step 0) and the newer ones that were skipped."""

    chosen: Candidate | None
    skipped: list[Candidate]


def choose_resumable(ckpt_dir: str | os.PathLike, device=None) -> Choice:
    """The newest checkpoint intact on every rank (collective: call it on all ranks).

    Each rank checks the files itself (on a shared filesystem a rank may see another node's
    writes late); the ranks then agree on the newest step all of them find intact.
    """
    found = candidates(ckpt_dir)
    intact = {c.step for c in found if c.problem is None}
    bound = max(intact, default=-1)
    while True:
        agreed = _min_over_ranks(bound, device)
        if agreed < 0 or _min_over_ranks(int(agreed in intact), device):
            break
        bound = max((s for s in intact if s < agreed), default=-1)
    chosen = next((c for c in found if c.step == agreed), None) if agreed >= 0 else None
    skipped = [c if c.problem else Candidate(c.tag, c.step, "it is incomplete as another rank sees it")
               for c in found if chosen is None or c.step > chosen.step]
    return Choice(chosen, skipped)


def skipped_warning(choice: Choice) -> str | None:
    """One line naming every skipped checkpoint, why, and what is used instead."""
    if not choice.skipped:
        return None
    what = "; ".join(f"{c.tag}: {c.problem}" for c in choice.skipped)
    instead = (f"resuming from {choice.chosen.tag} instead" if choice.chosen
               else "no intact checkpoint is left, so training starts from step 0")
    return (f"[pairforge] warning: skipped damaged checkpoint(s) ({what}); {instead}; the skipped ones "
            f"are moved to checkpoints/{DAMAGED_DIR}/")


def set_aside(ckpt_dir: str | os.PathLike, choice: Choice) -> None:
    """Rank 0: move the skipped checkpoints to ``damaged/<tag>/`` and point ``latest.json`` at
    the chosen one, so a later save of the same step never mixes with their files."""
    root = Path(ckpt_dir)
    for c in choice.skipped:
        dest = root / DAMAGED_DIR / c.tag
        if dest.exists():
            shutil.rmtree(dest)
        for sub in ("state", *ENGINE_DIRS):
            if (root / sub / c.tag).exists():
                dest.mkdir(parents=True, exist_ok=True)
                os.replace(root / sub / c.tag, dest / sub)
    if choice.chosen is not None:
        _atomic_write(root / "latest.json", json.dumps({"tag": choice.chosen.tag, "step": choice.chosen.step}))
    elif choice.skipped:
        (root / "latest.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------- save / load
def save(ckpt_dir: str | os.PathLike, engine_g, engine_d, step: int, state: dict,
         noise_gen: torch.Generator, keep: int = 2) -> str:
    """Collective: every rank must call it."""
    from safetensors.torch import save_file

    root = Path(ckpt_dir)
    tag = TAG_FMT.format(step)
    sdir = root / "state" / tag
    if _rank() == 0:  # a previous save of this step (never resumed) must not vouch for the new files
        (sdir / MARKER).unlink(missing_ok=True)
    _barrier()
    client = {"pairforge_step": int(step)}
    engine_g.save_checkpoint(str(root / "G"), tag=tag, client_state=client, save_latest=False)
    engine_d.save_checkpoint(str(root / "D"), tag=tag, client_state=client, save_latest=False)
    sdir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in rng_state(noise_gen).items()}, str(sdir / f"rank{_rank()}.safetensors"))
    _barrier()
    if _rank() == 0:  # every rank has written: the marker, then the pointer
        marker = {**state, "step": int(step), "tag": tag, "files": checkpoint_files(root, tag)}
        _atomic_write(sdir / MARKER, json.dumps(marker, indent=2))
        _atomic_write(root / "latest.json", json.dumps({"tag": tag, "step": int(step)}))
        _prune(root, keep, current=tag)
    _barrier()
    return tag


def _prune(root: Path, keep: int, current: str) -> None:
    tags = sorted(p.name for p in (root / "state").iterdir() if p.name.startswith("step"))
    for tag in tags[:-keep]:
        if tag == current:
            continue
        for sub in ("G", "D", "state"):
            shutil.rmtree(root / sub / tag, ignore_errors=True)


def load(ckpt_dir: str | os.PathLike, engine_g, engine_d, noise_gen: torch.Generator,
         tag: str | None = None) -> dict | None:
    """Restore checkpoint ``tag`` (default: the newest this process finds intact) into both
    engines and this rank's RNGs; returns its state dict, or None when there is none."""
    from safetensors.torch import load_file

    root = Path(ckpt_dir)
    if tag is None:
        found = newest_intact(root)
        if found is None:
            return None
        tag = found.tag
    for engine, sub in ((engine_g, "G"), (engine_d, "D")):
        path, _ = engine.load_checkpoint(str(root / sub), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"could not load the {sub} engine checkpoint {root / sub / tag}")
    state = json.loads((root / "state" / tag / MARKER).read_text())
    state.pop("files", None)
    rng_file = root / "state" / tag / f"rank{_rank()}.safetensors"
    if rng_file.exists():
        set_rng_state(load_file(str(rng_file)), noise_gen)
    state["rng_restored"] = rng_file.exists()
    return state


# --------------------------------------------------------------------------- export
def full_state_dict(engine) -> dict[str, torch.Tensor]:
    """The engine's full module state dict, on CPU (collective under ZeRO-3).

    Under ZeRO-3 each rank holds a slice of every parameter; DeepSpeed's public
    ``zero.GatheredParameters`` gathers them for the duration of the block.
    """
    if engine.zero_optimization_stage() != 3:
        return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        return {k: v.detach().cpu().clone() for k, v in engine.module.state_dict().items()}


def export_generator(engine_g, cfg, out_dir: str | os.PathLike) -> dict | None:
    """Collective. Rank 0 rebuilds the generator from the config, loads the trained weights
    and writes DIR/export/ (LoRA safetensors + merged UNet + VAE + scheduler, diffusers layout)."""
    from pairforge.training.model.networks.generator import build_generator, generator_base_description

    sd = full_state_dict(engine_g)
    meta = None
    if _rank() == 0:
        gen = build_generator(cfg.generator, seed=cfg.seed)
        missing, unexpected = gen.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        if unexpected or [m for m in missing if "alphas_cumprod" not in m]:
            raise RuntimeError(f"export: state dict mismatch (missing {missing[:5]}, unexpected {unexpected[:5]})")
        out = Path(out_dir)
        if out.exists():
            shutil.rmtree(out)
        meta = gen.export(out, base=generator_base_description(cfg.generator, cfg.seed),
                          lora_on_base=not (cfg.generator.train_unet))
    _barrier()
    return meta
