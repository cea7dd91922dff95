"""The D3SR training loop, written out step by step (nanoGPT / diffusers-examples style).

``run`` reads top to bottom: ``set_up`` builds everything the run needs once (process group,
run-directory lock, data split, models and engines, resume, loaders, logger) into a
:class:`Session`; then the loop; then ``finish`` (last checkpoint, export, report). The
loop's helpers (``train_on_batch``, ``validate``, ``save_checkpoint``) are top-level
functions of the session.

One optimisation step (per micro-batch, ``grad_accum`` micro-batches per step):

1. **Generator step** — D frozen (``requires_grad_(False)``): x̂ = G(LR↑); shared t ~ U[t_min,
   t_max] and noise; fake logits = D(F(ẑ, t)); L_G = MSE + λ·EA-DISTS (+ LPIPS/DISTS) + λ_adv·GAN;
   ``engine_g.backward``; ``engine_g.step``.
2. **Discriminator step** — the same batch's real latent E(x) and the detached ẑ are noised to
   one new shared t; L_D = GAN loss on (real, fake); ``engine_d.backward``; ``engine_d.step``.

Every rank runs this on its own part of the data stream (training/loop/data.py); DeepSpeed
averages gradients. Rank 0 logs, validates (all ranks compute their slice, then all-reduce),
writes images, checkpoints (collective) and the final export + report.

Entry points: ``run(cfg, data, out, resume)`` inside an already-launched rank;
``python -m pairforge.training.loop.trainer JOB.json`` for ranks spawned by training.launch.

Rank faults: once the run directory is claimed, every rank watches the other ranks on its
machine (``training.launch.PeerWatch``) and stops, naming the dead one, instead of waiting for
it in a collective. ``--resume auto`` takes the newest checkpoint intact on every rank and
names (and moves aside) newer ones that are damaged (``training.checkpoint.choose_resumable``).

Test hook, not a setting: with ``PAIRFORGE_TEST_KILL_AT_STEP=N`` in its environment a rank
SIGKILLs itself right after finishing step N (its checkpoint, if one is due, written first),
without any cleanup, so tests can kill a run at a known step and resume it. Only this module
reads it; it is not part of :class:`~pairforge.training.config.TrainConfig`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pairforge.training.config import TrainConfig, from_dict
from pairforge.training.loop import checkpoint as ckpt
from pairforge.training.loop.d_augment import augment
from pairforge.training.loop.data import batch_val, load_val_pairs, make_train_loader, split_train_val
from pairforge.training.loop.engines import build_engines, frozen, init_distributed
from pairforge.training.loop.logging_utils import RunLogger, image_grid
from pairforge.training.loop.losses import (
    D_T_BUCKETS,
    LOW_T_BUCKET,
    GeneratorLoss,
    backbone_sources,
    bucket_name,
    build_perceptual,
    d_bucket_metrics,
    d_bucket_sums,
    d_loss,
)
from pairforge.training.loop.preflight import check_dataset
from pairforge.training.loop.validation import discriminator_sums, evaluate
from pairforge.training.model.networks import build_discriminator, build_generator
from pairforge.training.runtime.launch import PeerWatch, launched_by_pairforge, watch_peers
from pairforge.training.runtime.quiet import prints_to_log
from pairforge.training.runtime.rank import bootstrap_rank
from pairforge.training.runtime.runlock import RunDirLocked, RunLock
from pairforge.training.runtime.runlock import acquire as acquire_run_dir

#: test hook (see the module docstring): the step after which a rank SIGKILLs itself
TEST_KILL_AT_STEP_ENV = "PAIRFORGE_TEST_KILL_AT_STEP"

#: the per-micro-batch values averaged into each metrics.jsonl record (when present)
LOGGED_LOSSES = ("loss_g", "loss_d", "d_real", "d_fake", "mse", "ea_dists", "dists", "lpips", "g_adv")
#: per t bucket, D's per-sample sums (losses.d_bucket_sums) that each record turns into
#: ``d_margin_<bucket>`` and ``d_acc_<bucket>`` (losses.d_bucket_metrics)
D_BUCKET_SUMS = tuple(f"d_{k}_{bucket_name(lo, hi)}" for lo, hi in D_T_BUCKETS for k in ("n", "real", "fake", "hits"))
#: the validation metrics averaged over every rank's held-out slice
VALIDATION_METRICS = ("sr_psnr", "sr_ssim", "sr_lpips", "sr_dists", "bicubic_psnr", "bicubic_ssim",
                      "bicubic_lpips", "bicubic_dists")


# --------------------------------------------------------------------------- collectives
def _all_mean(values: dict[str, float], device) -> dict[str, float]:
    """Average a dict of floats over ranks (same keys on every rank)."""
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _all_sum(values: dict[str, float], device) -> dict[str, float]:
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


# --------------------------------------------------------------------------- one micro-step
def generator_step(engine_g, engine_d, loss_fn, lr_up, hr, cfg: TrainConfig, noise_gen, use_adv: bool, device):
    """One generator micro-step with the discriminator frozen. Returns (outputs, loss, parts)."""
    d_cfg = cfg.discriminator
    g_dtype = engine_g.module.dtype
    with frozen(engine_d.module):
        out_g = engine_g(lr_up.to(g_dtype), hr.to(g_dtype))
        fake_logits = None
        if use_adv:
            t = torch.randint(d_cfg.t_min, d_cfg.t_max + 1, (hr.shape[0],), device=device, generator=noise_gen)
            shape = engine_d.module.latent_shape(out_g["z_fake"], out_g["sr"])
            noise = torch.randn(shape, device=device, generator=noise_gen)
            # D's *module*, not its engine: an engine forward registers backward hooks on its
            # outputs that would run D's gradient reduction (and rescale the gradient by D's
            # accumulation steps) inside the G backward.
            z_fake, sr = augment(d_cfg.augment, [out_g["z_fake"], out_g["sr"]], noise_gen, device)
            fake_logits = engine_d.module(z_fake, t, noise, image01=sr)
        loss_g, parts = loss_fn(out_g["sr"], hr, fake_logits, use_adv=use_adv)
        engine_g.backward(loss_g)
        engine_g.step()
    return out_g, loss_g, parts


def discriminator_step(engine_d, out_g, hr, cfg: TrainConfig, noise_gen, device):
    """One discriminator micro-step: real E(x) vs detached ẑ, noised to one shared t.

    Returns (loss_d, real_logits, fake_logits, t): the logits from before this step's update, and
    each sample's t, so the caller can measure D per t bucket."""
    d_cfg = cfg.discriminator
    z_real, z_fake = out_g["z_real"].detach(), out_g["z_fake"].detach()
    t = torch.randint(d_cfg.t_min, d_cfg.t_max + 1, (hr.shape[0],), device=device, generator=noise_gen)
    noise_r = torch.randn(engine_d.module.latent_shape(z_real, hr), device=device, generator=noise_gen)
    noise_f = torch.randn(engine_d.module.latent_shape(z_fake, out_g["sr"]), device=device, generator=noise_gen)
    z_real, hr_d, z_fake, sr_d = augment(d_cfg.augment, [z_real, hr.to(z_real.dtype), z_fake, out_g["sr"].detach()],
                                         noise_gen, device)
    real_logits = engine_d(z_real, t, noise_r, image01=hr_d)
    fake_logits = engine_d(z_fake, t, noise_f, image01=sr_d)
    loss_d = d_loss(real_logits, fake_logits, cfg.loss.gan)
    engine_d.backward(loss_d)
    engine_d.step()
    return loss_d, real_logits, fake_logits, t


# --------------------------------------------------------------------------- the run's objects
@dataclass(frozen=True)
class DataSplit:
    """Which shards train and which validate (from the training dataset's manifest)."""
    url: str
    dataset_id: str | None
    train_shards: list[dict]
    held_out: list[dict]
    val_url: str | None  # a separate validation dataset; then nothing is held out

    @property
    def n_train(self) -> int:
        return sum(int(s["count"]) for s in self.train_shards)

    def record(self) -> dict:
        """The split as run.json keeps it, so ``pairforge eval --model RUN/export`` can score only
        the pairs this run never trained on: per shard its name and sample count, and where a shard
        is split, ``end`` (training reads its samples before that index) / ``first`` (the held-out
        samples start there)."""
        keep = ("name", "count", "bytes", "end", "first")
        return {"data": self.url, "dataset_id": self.dataset_id, "val_data": self.val_url,
                "train": [{k: e[k] for k in keep if k in e} for e in self.train_shards],
                "held_out": [{k: e[k] for k in keep if k in e} for e in self.held_out]}


@dataclass
class Nets:
    """What trains (two engines, the loss and its noise generator) and what scores validation."""
    engine_g: Any
    engine_d: Any
    loss_fn: GeneratorLoss
    noise_gen: torch.Generator
    val_nets: dict[str, torch.nn.Module]
    backbones: dict[str, str]  # perceptual backbone per network, reported in run.json and results


@dataclass
class Session:
    """Everything one rank's run keeps from set-up to the end, handed to the loop's helpers."""
    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    data: DataSplit
    nets: Nets
    loader: DataLoader
    logger: RunLogger
    run_lock: RunLock | None
    val_pairs: list[dict] = field(default_factory=list)  # this rank's slice of the held-out pairs
    peer_watch: PeerWatch | None = None  # stops this rank when another rank on its machine dies

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    @property
    def samples_per_step(self) -> int:
        """Samples one optimisation step consumes over all ranks."""
        return self.cfg.engine.grad_accum * self.cfg.data.batch_size * self.world


# --------------------------------------------------------------------------- set-up
def claim_run_dir(out: Path, rank: int, device: torch.device) -> RunLock | None:
    """Rank 0 locks the run directory, unless pairforge's launcher already holds it for us.

    Under a cluster launcher (torchrun, deepspeed) nothing else guards ``out``. Every rank
    learns rank 0's outcome (one all-reduce), so a refusal stops all of them together instead
    of leaving the others waiting in a collective.
    """
    if launched_by_pairforge():
        return None
    lock, refusal = None, None
    if rank == 0:
        try:
            lock = acquire_run_dir(out)
        except RunDirLocked as exc:
            refusal = exc
        else:
            if lock.previous is not None:
                print(f"[pairforge] {lock.takeover_note()}", flush=True)
    refused = torch.tensor([0.0 if refusal is None else 1.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(refused, op=dist.ReduceOp.MAX)
    if refusal is not None:
        raise refusal
    if refused.item():
        raise RunDirLocked(f"rank 0 could not lock the run directory {out} (its log names the owner)")
    return lock


def join_process_group() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process, once the process group is up."""
    with prints_to_log("deepspeed.init_distributed"):
        init_distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def split_data(cfg: TrainConfig, data: str, val_data: str | None) -> DataSplit:
    """Training and held-out shards: the last ``data.val_shards`` validate, unless a separate
    validation dataset is given (or validation is off); a dataset with too few shards holds out
    samples of its last shard instead."""
    val_url = val_data or cfg.data.val_data
    manifest = check_dataset(cfg, data)
    train_shards, held_out = split_train_val(manifest, cfg.data.val_shards if cfg.log.val_every else 0,
                                             has_val_data=bool(val_url), val_samples=cfg.data.val_samples)
    return DataSplit(data, manifest.get("dataset_id"), train_shards, held_out, val_url)


def build_nets(cfg: TrainConfig, rank: int, device: torch.device) -> Nets:
    """Generator and discriminator in their DeepSpeed engines, the loss, the validation networks."""
    generator = build_generator(cfg.generator, seed=cfg.seed)
    discriminator = build_discriminator(cfg.discriminator, generator.latent_scale, seed=cfg.seed)
    engine_g, engine_d = build_engines(generator, discriminator, cfg)
    perceptual = build_perceptual(cfg.loss, device)
    loss_fn = GeneratorLoss(cfg.loss, perceptual)
    val_nets = {}
    if cfg.log.val_every:
        from pairforge.training.model.perceptual import DISTS, LPIPS
        kw = dict(weights_dir=cfg.loss.weights_dir, backbone=cfg.loss.perceptual_backbone)
        val_nets = {"lpips": LPIPS(net="alex", **kw).to(device).eval(),
                    "dists": perceptual.get("dists") or DISTS(**kw).to(device).eval()}
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + rank)
    return Nets(engine_g, engine_d, loss_fn, noise_gen, val_nets, backbone_sources({**perceptual, **val_nets}))


def resume_step(resume: str | None, ckpt_dir: Path, nets: Nets, cfg: TrainConfig, rank: int, world: int,
                device: torch.device | None = None) -> int:
    """The step to continue from: 0, or with ``resume="auto"`` the step of the newest checkpoint
    that is intact on every rank (both engines, RNG states and the data position restored).
    Newer checkpoints that are damaged or incomplete are named, skipped and moved aside."""
    if resume in (None, "", "none"):
        return 0
    if resume != "auto":
        raise ValueError(f"--resume: expected 'auto', got {resume!r}")
    choice = ckpt.choose_resumable(ckpt_dir, device)
    if rank == 0 and choice.skipped:
        print(ckpt.skipped_warning(choice), file=sys.stderr, flush=True)
    state = None
    if choice.chosen is not None:
        state = ckpt.load(ckpt_dir, nets.engine_g, nets.engine_d, nets.noise_gen, tag=choice.chosen.tag)
    if choice.skipped:
        if dist.is_initialized():
            dist.barrier()  # every rank has read what it needs before rank 0 moves anything
        if rank == 0:
            ckpt.set_aside(ckpt_dir, choice)
    if state is None:
        return 0
    step = int(state["step"])
    if rank == 0:
        if state.get("world") != world or state.get("workers") != cfg.data.num_workers:
            print(f"[pairforge] resuming step {step} with a different ranks×workers layout: "
                  "the data order changes from here on")
        print(f"[pairforge] resumed from {state['tag']} (step {step})")
    return step


def validation_pairs(cfg: TrainConfig, split: DataSplit, rank: int, world: int) -> list[dict]:
    """This rank's slice of the fixed validation set (empty when validation is off)."""
    if not cfg.log.val_every:
        return []
    url, shards = (split.val_url, None) if split.val_url else (split.url, split.held_out)
    return load_val_pairs(url, shards, cfg.data.val_samples, cfg.data.crop_size)[rank::world]


def write_run_files(s: Session) -> None:
    """``config.yaml`` and ``run.json``: what this run trains on and with (rank 0)."""
    if s.rank != 0:
        return
    s.cfg.save(s.out / "config.yaml")
    (s.out / "run.json").write_text(json.dumps({
        "data": s.data.url, "dataset_id": s.data.dataset_id, "world_size": s.world,
        "train_samples": s.data.n_train, "train_shards": len(s.data.train_shards),
        "held_out_shards": sum("first" not in e for e in s.data.held_out),
        "held_out_samples": sum(int(e["count"]) for e in s.data.held_out), "val_data": s.data.val_url,
        "perceptual_backbone": s.nets.backbones, "config_fingerprint": s.cfg.fingerprint(),
        "device": str(s.device), "split": s.data.record()}, indent=2))


def set_up(cfg: TrainConfig, data: str, out: Path, resume: str | None, val_data: str | None) -> tuple[Session, int]:
    """Build the session and find the step to start from. The order matters: the run directory
    is locked before anything is written into it, and the global RNG is seeded before any
    network is built (a resumed checkpoint then restores the RNG states)."""
    rank, world, device = join_process_group()
    run_lock = claim_run_dir(out, rank, device)
    peer_watch = watch_peers(rank, world, device)  # from here a dead rank stops every rank
    if device.type == "cpu" and "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(cfg.seed)
    split = split_data(cfg, data, val_data)
    if rank == 0 and any("first" in e for e in split.held_out):
        print(f"[pairforge] {data}: too few shards to hold out data.val_shards={cfg.data.val_shards}; "
              f"validating on the last {split.held_out[0]['count']} sample(s) of {split.held_out[0]['name']} "
              "instead (training never reads them)")
    nets = build_nets(cfg, rank, device)
    step = resume_step(resume, out / "checkpoints", nets, cfg, rank, world, device)
    loader = make_train_loader(data, split.train_shards, rank, world, cfg.data.batch_size, cfg.data.num_workers,
                               cfg.seed, cfg.data.crop_size, cfg.data.shuffle_window,
                               start_batches=step * cfg.engine.grad_accum, prefetch_factor=cfg.data.prefetch_factor)
    val_pairs = validation_pairs(cfg, split, rank, world)
    logger = RunLogger(out, enabled=rank == 0, total_steps=cfg.steps, start_step=step,
                       tensorboard=cfg.log.tensorboard, progress_bar=cfg.log.progress_bar)
    session = Session(cfg, out, rank, world, device, split, nets, loader, logger, run_lock, val_pairs,
                      peer_watch=peer_watch)
    write_run_files(session)
    return session, step


# --------------------------------------------------------------------------- the loop's helpers
def train_on_batch(s: Session, batch: dict, use_adv: bool) -> dict[str, float]:
    """One generator and one discriminator micro-step on ``batch``; the values to log."""
    hr = batch["hr"].to(s.device, non_blocking=True)
    lr_up = batch["lr_up"].to(s.device, non_blocking=True)
    n = s.nets
    out_g, loss_g, parts = generator_step(n.engine_g, n.engine_d, n.loss_fn, lr_up, hr, s.cfg, n.noise_gen,
                                          use_adv, s.device)
    # the first update's logits (before any update on this batch's fakes) are what D is measured on
    loss_d, real_logits, fake_logits, t = discriminator_step(n.engine_d, out_g, hr, s.cfg, n.noise_gen, s.device)
    for _ in range(s.cfg.discriminator.updates_per_step - 1):
        discriminator_step(n.engine_d, out_g, hr, s.cfg, n.noise_gen, s.device)
    return {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()),
            "d_real": float(real_logits.detach().mean()), "d_fake": float(fake_logits.detach().mean()), **parts,
            **d_bucket_sums(real_logits, fake_logits, t)}


class LossWindow:
    """Per-micro-batch values summed since the last logged step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def means(self, keys: tuple[str, ...]) -> dict[str, float]:
        return {k: self.sums.get(k, 0.0) / max(self.n, 1) for k in keys}


def train_record(s: Session, step: int, window: LossWindow, use_adv: bool, t_start: float) -> dict:
    """One metrics.jsonl record: the window's means averaged over ranks (a collective), with D's
    margin and accuracy per t bucket on the window's training batches (buckets it saw)."""
    means = _all_mean(window.means(LOGGED_LOSSES + D_BUCKET_SUMS), s.device)
    samples = step * s.samples_per_step
    return {"step": step, "epoch": samples / max(s.data.n_train, 1), "samples": samples,
            **{k: v for k, v in means.items() if k in ("loss_g", "loss_d") or k in window.sums and k in LOGGED_LOSSES},
            **d_bucket_metrics(means),
            "adv_on": use_adv, "lr_g": s.cfg.optim_g.lr, "lr_d": s.cfg.optim_d.lr,
            "samples_per_s": s.logger.rate(), "time_s": time.perf_counter() - t_start}


def validate(s: Session, at_step: int) -> dict:
    """Score the generator and bicubic on the held-out pairs (every rank its slice, then summed);
    rank 0 logs the record, an image grid and a one-line summary. Returns the record."""
    engine_g, module_d = s.nets.engine_g, s.nets.engine_d.module
    g_dtype = engine_g.module.dtype  # after DeepSpeed's cast (bf16/fp16/fp32)
    engine_g.eval()
    module_d.eval()
    batches = lambda: batch_val(s.val_pairs, s.cfg.data.batch_size)  # noqa: E731 (read twice)
    sums, n, first = evaluate(lambda lr_up: engine_g(lr_up.to(g_dtype))["sr"], batches(), s.nets.val_nets,
                              s.device)
    # D on the same held-out pairs: real E(x_H) vs G's latent, at fixed per-bucket t and noise
    # (seeded, so every validation of a run draws the same t and noise)
    d_sums = discriminator_sums(lambda lr_up, hr: engine_g.module(lr_up.to(g_dtype), hr.to(g_dtype)), module_d,
                                batches(), s.device, seed=s.cfg.seed * 1009 + s.rank)
    engine_g.train()
    module_d.train()
    tot = _all_sum({**{k: sums.get(k, 0.0) for k in VALIDATION_METRICS}, "n": float(n),
                    **{k: d_sums.get(k, 0.0) for k in D_BUCKET_SUMS}}, s.device)
    rec = {"step": at_step, **{k: tot[k] / max(tot["n"], 1) for k in VALIDATION_METRICS}, "n": int(tot["n"]),
           **d_bucket_metrics(tot), "backbone": s.nets.backbones.get("lpips", "?")}
    s.logger.log_validation(rec)
    if s.rank == 0 and first is not None:
        s.logger.log_images(at_step, image_grid(*first))
        print(f"[pairforge] val step {at_step}: PSNR {rec['sr_psnr']:.2f} (bicubic {rec['bicubic_psnr']:.2f}) "
              f"LPIPS {rec['sr_lpips']:.4f} (bicubic {rec['bicubic_lpips']:.4f}) [{rec['backbone']}]"
              f"{low_t_words(rec)}", flush=True)
    return rec


def low_t_words(rec: dict) -> str:
    """`` D acc t<100 0.73 (margin +0.41)``: how well D tells the held-out real latents from G's at
    small t (0.50 is chance), for the validation line; empty when not measured."""
    acc, margin = rec.get(f"d_acc_{LOW_T_BUCKET}"), rec.get(f"d_margin_{LOW_T_BUCKET}")
    if acc is None:
        return ""
    hi = D_T_BUCKETS[0][1]
    return f"; D acc t<{hi} {acc:.2f} (margin {margin:+.3f})"


def save_checkpoint(s: Session, at_step: int) -> None:
    """Both engines, every rank's RNG state and the data position after ``at_step`` (collective)."""
    cfg, accum = s.cfg, s.cfg.engine.grad_accum
    ckpt.save(s.ckpt_dir, s.nets.engine_g, s.nets.engine_d, at_step, {
        "batches_consumed": at_step * accum, "world": s.world, "workers": cfg.data.num_workers,
        "batch_size": cfg.data.batch_size, "samples_seen": at_step * s.samples_per_step,
        "dataset_id": s.data.dataset_id, "config_fingerprint": cfg.fingerprint()},
        s.nets.noise_gen, keep=cfg.log.keep_checkpoints)


def kill_step_from_env() -> int | None:
    """The test hook's step (``PAIRFORGE_TEST_KILL_AT_STEP``); None when unset or 0."""
    raw = os.environ.get(TEST_KILL_AT_STEP_ENV, "").strip()
    if raw in ("", "0"):
        return None
    if not raw.isdigit():
        raise ValueError(f"{TEST_KILL_AT_STEP_ENV}={raw!r}: expected a step number (test hook)")
    return int(raw)


def finish(s: Session, step: int, saved_at: int) -> dict:
    """The last checkpoint and validation (unless the loop just wrote them), the export and the report."""
    if saved_at != step:
        save_checkpoint(s, step)
    if s.cfg.log.val_every and step % s.cfg.log.val_every != 0:
        validate(s, step)
    meta = ckpt.export_generator(s.nets.engine_g, s.cfg, s.out / "export")
    s.logger.close()
    result = {"step": step, "out": str(s.out), "perceptual_backbone": s.nets.backbones}
    if s.rank == 0:
        from pairforge.training.loop.report import build_report
        result["report"] = str(build_report(s.out))
        result["export"] = meta
    if s.peer_watch is not None:
        s.peer_watch.stop()  # past the last barrier a peer may exit first, and that is fine
    dist.barrier()
    if s.run_lock is not None:
        s.run_lock.release()
    return result


# --------------------------------------------------------------------------- the run
def run(cfg: TrainConfig, data: str, out: str | os.PathLike, resume: str | None = None,
        val_data: str | None = None) -> dict:
    """Train this rank to ``cfg.steps`` (from the latest checkpoint with ``resume="auto"``)."""
    s, step = set_up(cfg, data, Path(out), resume, val_data)
    kill_at = kill_step_from_env()
    if cfg.log.val_every and step == 0:
        validate(s, 0)

    batches = iter(s.loader)
    window = LossWindow()
    t_start = time.perf_counter()
    saved_at = -1
    while step < cfg.steps:
        use_adv = step >= cfg.loss.adv_start_step and cfg.loss.adv > 0
        for _ in range(cfg.engine.grad_accum):
            window.add(train_on_batch(s, next(batches), use_adv))
        step += 1
        s.logger.count(s.samples_per_step)
        s.logger.advance()

        if step % cfg.log.log_every == 0 or step == cfg.steps:
            s.logger.log(train_record(s, step, window, use_adv, t_start))
            window = LossWindow()
        if cfg.log.val_every and step % cfg.log.val_every == 0:
            validate(s, step)
        if cfg.log.ckpt_every and step % cfg.log.ckpt_every == 0:
            save_checkpoint(s, step)
            saved_at = step
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die without any cleanup

    return finish(s, step, saved_at)


def run_job(job_path: str | os.PathLike) -> int:
    """A rank started by ``spawn_local`` (``python -m pairforge.training.loop.trainer JOB.json``)."""
    job = json.loads(Path(job_path).read_text())
    cfg = from_dict(job["config"])
    bootstrap_rank(job["out"], cfg.data.num_workers)
    run(cfg, job["data"], job["out"], job.get("resume"), job.get("val_data"))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1]))
