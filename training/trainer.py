"""The D3SR training loop, written out step by step (diffusers-examples style).

One optimisation step (per micro-batch, ``grad_accum`` micro-batches per step):

1. **Generator step** — D frozen (``requires_grad_(False)``): x̂ = G(LR↑); shared t ~ U[t_min,
   t_max] and noise; fake logits = D(F(ẑ, t)); L_G = MSE + λ·EA-DISTS (+ LPIPS/DISTS) + λ_adv·GAN;
   ``engine_g.backward``; ``engine_g.step``.
2. **Discriminator step** — the same batch's real latent E(x) and the detached ẑ are noised to
   one new shared t; L_D = GAN loss on (real, fake); ``engine_d.backward``; ``engine_d.step``.

Every rank runs this on its own part of the data stream (training/data.py); DeepSpeed
averages gradients. Rank 0 logs, validates (all ranks compute their slice, then all-reduce),
writes images, checkpoints (collective) and the final export + report.

Entry points: ``run(cfg, data, out, resume)`` inside an already-launched rank;
``python -m pairforge.training.trainer JOB.json`` for ranks spawned by training.launch.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pairforge.training import checkpoint as ckpt
from pairforge.training.config import TrainConfig, from_dict
from pairforge.training.data import batch_val, load_val_pairs, make_train_loader, split_train_val
from pairforge.training.engines import build_engines, frozen, init_distributed
from pairforge.training.launch import launched_by_pairforge, watch_launcher
from pairforge.training.logging_utils import RunLogger, image_grid
from pairforge.training.losses import GeneratorLoss, backbone_sources, build_perceptual, d_loss
from pairforge.training.models import build_discriminator, build_generator
from pairforge.training.runlock import RunDirLocked, RunLock
from pairforge.training.runlock import acquire as acquire_run_dir
from pairforge.training.validation import evaluate


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


def generator_step(engine_g, engine_d, loss_fn, lr_up, hr, cfg: TrainConfig, noise_gen, use_adv: bool, device):
    """One generator micro-step with the discriminator frozen. Returns (outputs, loss, parts)."""
    d_cfg = cfg.discriminator
    g_dtype = engine_g.module.dtype
    with frozen(engine_d.module):
        out_g = engine_g(lr_up.to(g_dtype), hr.to(g_dtype))
        fake_logits = None
        if use_adv:
            t = torch.randint(d_cfg.t_min, d_cfg.t_max + 1, (hr.shape[0],), device=device, generator=noise_gen)
            noise = torch.randn(out_g["z_fake"].shape, device=device, generator=noise_gen)
            # D's *module*, not its engine: an engine forward registers backward hooks on its
            # outputs that would run D's gradient reduction (and rescale the gradient by D's
            # accumulation steps) inside the G backward.
            fake_logits = engine_d.module(out_g["z_fake"], t, noise, image01=out_g["sr"])
        loss_g, parts = loss_fn(out_g["sr"], hr, fake_logits, use_adv=use_adv)
        engine_g.backward(loss_g)
        engine_g.step()
    return out_g, loss_g, parts


def discriminator_step(engine_d, out_g, hr, cfg: TrainConfig, noise_gen, device):
    """One discriminator micro-step: real E(x) vs detached ẑ, noised to one shared t."""
    d_cfg = cfg.discriminator
    z_real, z_fake = out_g["z_real"].detach(), out_g["z_fake"].detach()
    t = torch.randint(d_cfg.t_min, d_cfg.t_max + 1, (hr.shape[0],), device=device, generator=noise_gen)
    noise_r = torch.randn(z_real.shape, device=device, generator=noise_gen)
    noise_f = torch.randn(z_fake.shape, device=device, generator=noise_gen)
    real_logits = engine_d(z_real, t, noise_r, image01=hr.to(z_real.dtype))
    fake_logits = engine_d(z_fake, t, noise_f, image01=out_g["sr"].detach())
    loss_d = d_loss(real_logits, fake_logits, cfg.loss.gan)
    engine_d.backward(loss_d)
    engine_d.step()
    return loss_d, real_logits, fake_logits


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


def run(cfg: TrainConfig, data: str, out: str | os.PathLike, resume: str | None = None,
        val_data: str | None = None) -> dict:
    from pairforge.pipeline import load_manifest

    out = Path(out)
    init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    run_lock = claim_run_dir(out, rank, device)  # before anything is written into ``out``
    if device.type == "cpu" and "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    torch.manual_seed(cfg.seed)
    accum, bs = cfg.engine.grad_accum, cfg.data.batch_size

    # ---- data ----------------------------------------------------------------------
    val_url = val_data or cfg.data.val_data
    manifest = load_manifest(data)
    train_shards, held_out = split_train_val(manifest, cfg.data.val_shards if cfg.log.val_every else 0,
                                             has_val_data=bool(val_url))
    n_train = sum(int(s["count"]) for s in train_shards)

    # ---- models, engines, losses -----------------------------------------------------
    generator = build_generator(cfg.generator, seed=cfg.seed)
    discriminator = build_discriminator(cfg.discriminator, generator.latent_scale, seed=cfg.seed)
    engine_g, engine_d = build_engines(generator, discriminator, cfg)
    perceptual = build_perceptual(cfg.loss, device)
    loss_fn = GeneratorLoss(cfg.loss, perceptual)
    val_nets = {}
    if cfg.log.val_every:
        from pairforge.training.perceptual import DISTS, LPIPS
        kw = dict(weights_dir=cfg.loss.weights_dir, backbone=cfg.loss.perceptual_backbone)
        val_nets = {"lpips": LPIPS(net="alex", **kw).to(device).eval(),
                    "dists": perceptual.get("dists") or DISTS(**kw).to(device).eval()}
    sources = backbone_sources({**perceptual, **val_nets})
    g_dtype = generator.dtype  # after DeepSpeed cast (bf16/fp16/fp32)
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 100003 + rank)

    # ---- resume ----------------------------------------------------------------------
    step = 0
    ckpt_dir = out / "checkpoints"
    if resume == "auto":
        state = ckpt.load(ckpt_dir, engine_g, engine_d, noise_gen)
        if state is not None:
            step = int(state["step"])
            if state.get("world") != world or state.get("workers") != cfg.data.num_workers:
                if rank == 0:
                    print(f"[pairforge] resuming step {step} with a different ranks×workers layout: "
                          "the data order changes from here on")
            if rank == 0:
                print(f"[pairforge] resumed from {state['tag']} (step {step})")
    elif resume not in (None, "", "none"):
        raise ValueError(f"--resume: expected 'auto', got {resume!r}")

    loader = make_train_loader(data, train_shards, rank, world, bs, cfg.data.num_workers, cfg.seed,
                               cfg.data.crop_size, cfg.data.shuffle_window, start_batches=step * accum,
                               prefetch_factor=cfg.data.prefetch_factor)
    val_pairs = []
    if cfg.log.val_every:
        val_pairs = load_val_pairs(val_url or data, None if val_url else held_out, cfg.data.val_samples,
                                   cfg.data.crop_size)[rank::world]

    logger = RunLogger(out, enabled=rank == 0, total_steps=cfg.steps, start_step=step,
                       tensorboard=cfg.log.tensorboard, progress_bar=cfg.log.progress_bar)
    if rank == 0:
        cfg.save(out / "config.yaml")
        (out / "run.json").write_text(json.dumps({
            "data": data, "dataset_id": manifest.get("dataset_id"), "world_size": world,
            "train_samples": n_train, "train_shards": len(train_shards), "held_out_shards": len(held_out),
            "val_data": val_url, "perceptual_backbone": sources, "config_fingerprint": cfg.fingerprint(),
            "device": str(device)}, indent=2))

    def validate(at_step: int) -> None:
        engine_g.eval()
        def generate(lr_up):
            return engine_g(lr_up.to(g_dtype))["sr"]
        sums, n, first = evaluate(generate, batch_val(val_pairs, bs), val_nets, device)
        engine_g.train()
        keys = ["sr_psnr", "sr_ssim", "sr_lpips", "sr_dists", "bicubic_psnr", "bicubic_ssim",
                "bicubic_lpips", "bicubic_dists"]
        tot = _all_sum({**{k: sums.get(k, 0.0) for k in keys}, "n": float(n)}, device)
        rec = {"step": at_step, **{k: tot[k] / max(tot["n"], 1) for k in keys}, "n": int(tot["n"]),
               "backbone": sources.get("lpips", "?")}
        logger.log_validation(rec)
        if rank == 0 and first is not None:
            logger.log_images(at_step, image_grid(*first))
            print(f"[pairforge] val step {at_step}: PSNR {rec['sr_psnr']:.2f} (bicubic {rec['bicubic_psnr']:.2f}) "
                  f"LPIPS {rec['sr_lpips']:.4f} (bicubic {rec['bicubic_lpips']:.4f}) [{rec['backbone']}]",
                  flush=True)

    def save_checkpoint(at_step: int) -> None:
        ckpt.save(ckpt_dir, engine_g, engine_d, at_step, {
            "batches_consumed": at_step * accum, "world": world, "workers": cfg.data.num_workers,
            "batch_size": bs, "samples_seen": at_step * accum * bs * world,
            "dataset_id": manifest.get("dataset_id"), "config_fingerprint": cfg.fingerprint()},
            noise_gen, keep=cfg.log.keep_checkpoints)

    if val_pairs is not None and cfg.log.val_every and step == 0:
        validate(0)

    # ---- the loop ----------------------------------------------------------------------
    l_cfg = cfg.loss
    data_iter = iter(loader)
    window: dict[str, float] = {}
    window_n = 0
    t_start = time.perf_counter()
    saved_at = -1
    while step < cfg.steps:
        use_adv = step >= l_cfg.adv_start_step and l_cfg.adv > 0
        for _ in range(accum):
            batch = next(data_iter)
            hr = batch["hr"].to(device, non_blocking=True)
            lr_up = batch["lr_up"].to(device, non_blocking=True)

            out_g, loss_g, parts = generator_step(engine_g, engine_d, loss_fn, lr_up, hr, cfg, noise_gen,
                                                  use_adv, device)
            loss_d, real_logits, fake_logits_d = discriminator_step(engine_d, out_g, hr, cfg, noise_gen, device)

            rec = {"loss_g": float(loss_g.detach()), "loss_d": float(loss_d.detach()),
                   "d_real": float(real_logits.detach().mean()), "d_fake": float(fake_logits_d.detach().mean()),
                   **parts}
            for k, v in rec.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
        step += 1
        logger.count(accum * bs * world)
        logger.advance()

        if step % cfg.log.log_every == 0 or step == cfg.steps:
            keys = ["loss_g", "loss_d", "d_real", "d_fake", "mse", "ea_dists", "dists", "lpips", "g_adv"]
            means = _all_mean({k: window.get(k, 0.0) / max(window_n, 1) for k in keys}, device)
            record = {"step": step, "epoch": step * accum * bs * world / max(n_train, 1),
                      "samples": step * accum * bs * world,
                      **{k: v for k, v in means.items() if k in ("loss_g", "loss_d") or window.get(k) is not None},
                      "adv_on": use_adv, "lr_g": cfg.optim_g.lr, "lr_d": cfg.optim_d.lr,
                      "samples_per_s": logger.rate(), "time_s": time.perf_counter() - t_start}
            logger.log(record)
            window, window_n = {}, 0
        if cfg.log.val_every and step % cfg.log.val_every == 0:
            validate(step)
        if cfg.log.ckpt_every and step % cfg.log.ckpt_every == 0:
            save_checkpoint(step)
            saved_at = step
        if cfg.debug_kill_at_step and step == cfg.debug_kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # test hook: die without any cleanup

    # ---- the end: final checkpoint, export, report ---------------------------------------
    if saved_at != step:
        save_checkpoint(step)
    if cfg.log.val_every and step % cfg.log.val_every != 0:
        validate(step)
    meta = ckpt.export_generator(engine_g, cfg, out / "export")
    logger.close()
    result = {"step": step, "out": str(out), "perceptual_backbone": sources}
    if rank == 0:
        from pairforge.training.report import build_report
        result["report"] = str(build_report(out))
        result["export"] = meta
    dist.barrier()
    if run_lock is not None:
        run_lock.release()
    return result


def run_job(job_path: str | os.PathLike) -> int:
    watch_launcher()  # a rank spawned by training.launch never outlives its launcher
    job = json.loads(Path(job_path).read_text())
    cfg = from_dict(job["config"])
    run(cfg, job["data"], job["out"], job.get("resume"), job.get("val_data"))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(run_job(sys.argv[1]))
