"""Two DeepSpeed engines, one for the generator and one for the discriminator.

Each engine gets its own config dict (ZeRO stage, precision, clipping, accumulation, its own
optimizer): DeepSpeed keeps separate optimizer states, loss scalers and checkpoints. The
optimizers are plain ``torch.optim.AdamW`` objects handed to ``deepspeed.initialize`` (no
FusedAdam JIT build). The frozen perceptual networks never enter an engine.

GAN + ZeRO-2/3: the generator step back-propagates *through* the discriminator. If D's
parameters still required grad, D's ZeRO hooks would reduce their gradients during the G
backward and again in the D step ("Gradient computed twice for this partition"), and with
ZeRO-1 G-step gradients would silently leak into D's update. ``frozen(engine_d.module)``
switches D's trainable parameters off for the G step.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from pairforge.config import deep_merge


def deepspeed_config(engine_cfg, optim_cfg, micro_batch: int, override_path: str | None = None) -> dict:
    """The DeepSpeed JSON config for one engine (optimizer excluded: we pass a torch one)."""
    stage = engine_cfg.zero_stage
    zero: dict = {"stage": stage}
    if stage in (1, 2):
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_bucket_size=5e7,
                    allgather_bucket_size=5e7)
    if stage == 3:
        zero.update(stage3_param_persistence_threshold=1e4, stage3_prefetch_bucket_size=5e7)
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": engine_cfg.grad_accum,
        "gradient_clipping": optim_cfg.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if engine_cfg.precision == "bf16":
        cfg["bf16"] = {"enabled": True}
    elif engine_cfg.precision == "fp16":
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16,
                       "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1}
    if override_path:
        cfg = deep_merge(cfg, json.loads(Path(override_path).expanduser().read_text()))
        cfg.pop("optimizer", None)  # the torch optimizer below is authoritative
    return cfg


def make_optimizer(module: torch.nn.Module, optim_cfg) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__} has no trainable parameters")
    return torch.optim.AdamW(params, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas),
                             weight_decay=optim_cfg.weight_decay, eps=optim_cfg.eps)


#: DeepSpeed's name for its CPU shared-memory collective op (op_builder/cpu/comm.py)
SHM_COMM_OP = "deepspeed_shm_comm"


def init_distributed() -> None:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_* (set by our launcher,
    torchrun or the deepspeed launcher); gloo on CPU, nccl on GPU."""
    import deepspeed

    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        from pairforge.training.runtime.launch import free_port
        os.environ["MASTER_PORT"] = str(free_port())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        skip_shm_comm_op()
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def skip_shm_comm_op() -> bool:
    """Tell DeepSpeed not to JIT-build its CPU shared-memory collective; call before
    ``deepspeed.init_distributed`` in a CPU (gloo) rank. Returns whether it was switched off.

    Why: on the CPU accelerator DeepSpeed's ``TorchBackend`` builds ``deepspeed_shm_comm`` with
    ninja and g++ when it is created (``comm/torch.py: build_shm_op``): 100-200 s on 2 cores on
    a machine's first run, and again whenever its cache folder is new or seen through another
    path. The op serves only ``inference_all_reduce`` (tensor-parallel inference kernels); every
    collective training uses (ZeRO's reduce/all-gather, the trainer's all-reduces) goes to
    ``torch.distributed`` on gloo, so the losses do not change. DeepSpeed builds it only while
    ``deepspeed.ops.__compatible_ops__`` marks it compatible; that dict is probed once
    (~0.4 s) and cached in the module, and DeepSpeed keeps edits to it, so marking the op
    incompatible there is the switch. The rest of the probe is untouched.
    """
    try:
        import deepspeed.ops

        compatible = deepspeed.ops.__compatible_ops__
    except (ImportError, AttributeError):  # another DeepSpeed layout: it builds as before
        return False
    if not isinstance(compatible, dict):
        return False
    compatible[SHM_COMM_OP] = False
    return True


#: DeepSpeed's Muon modules, imported by its ZeRO code only to ask whether the optimizer is Muon
MUON_MODULES = ("deepspeed.runtime.zero.muon.muon_optimizer", "deepspeed.runtime.zero.muon.original_muon")


class _NotMuon:
    """What the stand-in modules hand out for any name: a class no optimizer is an instance
    of (``isinstance`` answers False) and that refuses to be called."""

    def __new__(cls, *args, **kwargs):
        raise RuntimeError("pairforge trains with AdamW; DeepSpeed's Muon optimizer is not loaded")


def _not_muon_attribute(name: str) -> type:
    """Module ``__getattr__`` of a stand-in: every public name is :class:`_NotMuon`; dunder
    names (``__file__`` …, which ``inspect`` and pickle probe) do not exist."""
    if name.startswith("__"):
        raise AttributeError(name)
    return _NotMuon


def skip_muon_probe() -> list[str]:
    """Answer DeepSpeed's "is this optimizer Muon?" checks without importing Muon; call before
    ``deepspeed.initialize``. Returns the modules stood in for.

    Why: ``deepspeed.initialize`` (``is_zero_supported_optimizer``), ZeRO-1/2's first gradient
    partition and ZeRO-3 / bf16 set-up import ``MuonWithAuxAdam`` and ``muon_update`` only to
    ask ``isinstance(optimizer, MuonWithAuxAdam)`` or ``tensor.use_muon``; those imports pull in
    ``torch._inductor`` kernels and take ~4.7 s of every rank's start on 2 CPU cores (measured:
    1.9 s + 2.8 s). pairforge hands DeepSpeed ``torch.optim.AdamW`` objects only, so the answer
    is always "no": stand-in modules whose every name is :class:`_NotMuon` give it. A module
    imported already (a user's own Muon code) is left alone.
    """
    import sys
    import types

    stood_in = []
    for name in MUON_MODULES:
        if name in sys.modules:
            continue
        module = types.ModuleType(name, "pairforge: stands in for DeepSpeed's Muon optimizer (never used)")
        module.__getattr__ = _not_muon_attribute
        sys.modules[name] = module
        stood_in.append(name)
    return stood_in


def build_engine(module: torch.nn.Module, engine_cfg, optim_cfg, micro_batch: int,
                 override_path: str | None = None):
    import deepspeed

    from pairforge.training.loop.checkpoint import install_safe_checkpoint_engine

    ds_cfg = deepspeed_config(engine_cfg, optim_cfg, micro_batch, override_path)
    skip_muon_probe()
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=make_optimizer(module, optim_cfg),
                                           config=ds_cfg)
    install_safe_checkpoint_engine(engine)
    return engine


def build_engines(generator, discriminator, cfg):
    """(engine_g, engine_d) from a TrainConfig."""
    e = cfg.engine
    engine_g = build_engine(generator, e, cfg.optim_g, cfg.data.batch_size, e.deepspeed_g)
    engine_d = build_engine(discriminator, e, cfg.optim_d, cfg.data.batch_size, e.deepspeed_d)
    return engine_g, engine_d


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """Temporarily set requires_grad=False on the module's trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def engine_device(engine) -> torch.device:
    return engine.device if hasattr(engine, "device") else torch.device("cpu")
