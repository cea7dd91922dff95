"""Checkpoints: both engines, the step, the data position and every rank's RNG state.

Layout under ``DIR/checkpoints/``::

    G/<tag>/...              generator engine (DeepSpeed: module + ZeRO optimizer partitions)
    D/<tag>/...              discriminator engine (separate dir: DeepSpeed's file names collide)
    state/<tag>/state.json   step, batches consumed per rank, world size, workers, config/dataset ids
    state/<tag>/rank{r}.safetensors   that rank's torch RNG + training-noise generator states
    latest.json              {"tag", "step"} — written last, atomically: a checkpoint exists
                             only once every rank finished writing it

Loading never unpickles arbitrary objects: DeepSpeed's checkpoint engine is swapped for one
that calls ``torch.load(weights_only=True)`` with an explicit allowlist of the few DeepSpeed
types its state files contain; our own files are JSON and safetensors.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

TAG_FMT = "step{:08d}"


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
    p = Path(ckpt_dir) / "latest.json"
    return json.loads(p.read_text()) if p.exists() else None


def recorded_world_size(ckpt_dir: str | os.PathLike) -> tuple[int, int] | None:
    """``(world size, step)`` of the latest complete checkpoint, or None when there is none.

    Read before any rank starts: a ZeRO checkpoint is partitioned per rank, so resuming it
    needs the rank count it was written with.
    """
    info = latest(ckpt_dir)
    if info is None:
        return None
    state_file = Path(ckpt_dir) / "state" / info["tag"] / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        return None
    world = state.get("world")
    return (int(world), int(info.get("step", state.get("step", 0)))) if world is not None else None


# --------------------------------------------------------------------------- save / load
def save(ckpt_dir: str | os.PathLike, engine_g, engine_d, step: int, state: dict,
         noise_gen: torch.Generator, keep: int = 2) -> str:
    """Collective: every rank must call it."""
    from safetensors.torch import save_file

    root = Path(ckpt_dir)
    tag = TAG_FMT.format(step)
    client = {"pairforge_step": int(step)}
    engine_g.save_checkpoint(str(root / "G"), tag=tag, client_state=client, save_latest=False)
    engine_d.save_checkpoint(str(root / "D"), tag=tag, client_state=client, save_latest=False)
    sdir = root / "state" / tag
    sdir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in rng_state(noise_gen).items()}, str(sdir / f"rank{_rank()}.safetensors"))
    _barrier()
    if _rank() == 0:
        _atomic_write(sdir / "state.json", json.dumps({**state, "step": int(step), "tag": tag}, indent=2))
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


def load(ckpt_dir: str | os.PathLike, engine_g, engine_d, noise_gen: torch.Generator) -> dict | None:
    """Restore the newest complete checkpoint into both engines; returns its state dict."""
    from safetensors.torch import load_file

    root = Path(ckpt_dir)
    info = latest(root)
    if info is None:
        return None
    tag = info["tag"]
    for engine, sub in ((engine_g, "G"), (engine_d, "D")):
        path, _ = engine.load_checkpoint(str(root / sub), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"could not load the {sub} engine checkpoint {root / sub / tag}")
    state = json.loads((root / "state" / tag / "state.json").read_text())
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
    from pairforge.training.models.generator import build_generator, generator_base_description

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
