"""Training benchmarks for pairforge (prints tables; nothing here is asserted).

1. samples/s and peak memory per ZeRO stage (0–3) for the `tiny` preset on CPU, 2 gloo ranks;
2. data-loader throughput beside the trainer's consumption (target: loader ≥ 3×);
3. DeepSpeed overhead against a plain torch loop at equal batch (target: ≤ 10 %);
4. with a CUDA device: the full-size architectures (SD2.1 generator; SD2.1 and SDXL-partial
   discriminators, random init) at 512², bf16, batch 2 — step time and peak memory per ZeRO
   stage, with and without gradient checkpointing.

    python bench/training.py [--steps 8] [--batch 4] [--crop 64] [--skip-zero] [--gpu-only]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/full_size.py


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{c:.2f}" if isinstance(c, float) else str(c) for c in r) + " |")


def _perceptual_backbone() -> str:
    """``imagenet`` when EA-DISTS's weights (VGG16 trunk and DISTS alpha/beta) are all there, else
    ``random``: the timings do not depend on the weights' values, only on the networks run."""
    from pairforge.training.model.perceptual import PerceptualWeightsMissing, resolve_weights

    try:
        for kind in ("vgg16", "dists"):
            resolve_weights(kind)
    except PerceptualWeightsMissing:
        return "random"
    return "imagenet"


# --------------------------------------------------------------------------- timed loops
def _setup(stage: int | None, batch: int, crop: int, backbone: str, full: str | None = None,
           ckpt: bool = False, precision: str = "fp32"):
    import torch

    from pairforge.training.config import load_config
    from pairforge.training.loop.losses import GeneratorLoss, build_perceptual
    from pairforge.training.model.networks import build_discriminator, build_generator

    ov = {"loss": {"perceptual_backbone": backbone, "adv_start_step": 0},
          "engine": {"zero_stage": stage or 0, "precision": precision}, "data": {"batch_size": batch}}
    if full is not None:  # full-size architectures, random init (GPU part)
        cfg = load_config(preset="tiny", overrides=ov)
        cfg.generator.gradient_checkpointing = ckpt
        cfg.discriminator.gradient_checkpointing = ckpt
        g, d = _full_size_models(full, cfg, ckpt)
    else:
        cfg = load_config(preset="tiny", overrides=ov)
        g = build_generator(cfg.generator, seed=0)
        d = build_discriminator(cfg.discriminator, g.latent_scale, seed=0)
    loss_fn = GeneratorLoss(cfg.loss, build_perceptual(cfg.loss, "cuda" if torch.cuda.is_available() else "cpu"))
    return cfg, g, d, loss_fn


def _full_size_models(kind: str, cfg, ckpt: bool):
    """SD2.1-base generator + SD2.1 or SDXL-partial discriminator, random init (configs only)."""
    import torch
    from diffusers import UNet2DConditionModel
    from full_size import SD21_UNET, sd21_generator

    from pairforge.training.model.networks import backbones as bb
    from pairforge.training.model.networks.discriminator import DiffusionDiscriminator

    g = sd21_generator(cfg.generator.lora_targets, 16, ckpt)
    sd21_unet = SD21_UNET
    if kind == "sdxl":
        dunet = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, attention_head_dim=[5, 10, 20], use_linear_projection=True,
            block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                                   "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 2, 10], addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816)
        prompt, pooled, scale = torch.zeros(1, 77, 2048), torch.zeros(1, 1280), bb.SDXL_LATENT_SCALE
    else:
        dunet = UNet2DConditionModel(**sd21_unet)
        prompt, pooled, scale = torch.zeros(1, 77, 1024), None, bb.SD21_LATENT_SCALE
    dunet.requires_grad_(False)
    bb.add_lora(dunet, 16, 16, cfg.discriminator.lora_targets,
                exclude_prefixes=("up_blocks", "conv_out", "conv_norm_out", "conv_in", "time_embedding", "add_embedding"))
    if ckpt:
        dunet.enable_gradient_checkpointing()
    d = DiffusionDiscriminator(dunet, bb.default_scheduler(), 256, prompt, pooled, bb.SD21_LATENT_SCALE, scale)
    d.head.requires_grad_(True)
    return g, d


def time_deepspeed(stage: int, steps: int, batch: int, crop: int, backbone: str, full: str | None = None,
                   ckpt: bool = False, precision: str = "fp32") -> dict:
    import torch
    import torch.distributed as dist

    from pairforge.training.loop.engines import build_engines, init_distributed
    from pairforge.training.loop.trainer import discriminator_step, generator_step

    init_distributed()
    cfg, g, d, loss_fn = _setup(stage, batch, crop, backbone, full, ckpt, precision)
    eg, ed = build_engines(g, d, cfg)
    dev = eg.device
    gen = torch.Generator(device=dev).manual_seed(dist.get_rank())
    hr = torch.rand(batch, 3, crop, crop, device=dev)
    lr = torch.rand(batch, 3, crop, crop, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out, _, _ = generator_step(eg, ed, loss_fn, lr, hr, cfg, gen, True, dev)
        discriminator_step(ed, out, hr, cfg, gen, dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]
    world = dist.get_world_size()
    res = {"stage": stage, "world": world, "step_s": step_s, "samples_per_s": batch * world / step_s,
           "peak_rss_mb": _peak_rss_mb()}
    if dev.type == "cuda":
        res["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return res


def time_plain_torch(steps: int, batch: int, crop: int, backbone: str) -> dict:
    """The same G/D steps without DeepSpeed: torch AdamW, manual clipping."""
    import torch

    from pairforge.training.loop.engines import frozen, make_optimizer
    from pairforge.training.loop.losses import d_loss

    cfg, g, d, loss_fn = _setup(0, batch, crop, backbone)
    og, od = make_optimizer(g, cfg.optim_g), make_optimizer(d, cfg.optim_d)
    gen = torch.Generator().manual_seed(0)
    hr, lr = torch.rand(batch, 3, crop, crop), torch.rand(batch, 3, crop, crop)
    dc = cfg.discriminator
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with frozen(d):
            out = g(lr, hr)
            t = torch.randint(dc.t_min, dc.t_max + 1, (batch,), generator=gen)
            fl = d(out["z_fake"], t, torch.randn(out["z_fake"].shape, generator=gen))
            loss, _ = loss_fn(out["sr"], hr, fl)
            og.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in g.parameters() if p.requires_grad], cfg.optim_g.grad_clip)
            og.step()
        t = torch.randint(dc.t_min, dc.t_max + 1, (batch,), generator=gen)
        zr, zf = out["z_real"].detach(), out["z_fake"].detach()
        ld = d_loss(d(zr, t, torch.randn(zr.shape, generator=gen)), d(zf, t, torch.randn(zf.shape, generator=gen)))
        od.zero_grad(set_to_none=True)
        ld.backward()
        torch.nn.utils.clip_grad_norm_([p for p in d.parameters() if p.requires_grad], cfg.optim_d.grad_clip)
        od.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    return {"step_s": step_s, "samples_per_s": batch / step_s}


def time_loader(url: str, shards: list[dict], batch: int, workers: int, crop: int, batches: int) -> dict:
    from pairforge.training.loop.data import make_train_loader

    loader = make_train_loader(url, shards, 0, 1, batch, workers, seed=0, crop=crop, shuffle_window=16)
    it = iter(loader)
    next(it)  # worker start-up
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    dt = time.perf_counter() - t
    return {"workers": workers, "samples_per_s": batches * batch / dt}


# --------------------------------------------------------------------------- sub-process runner
def _run_ranks(mode: dict, ranks: int, threads: int) -> list[dict]:
    from pairforge.training.runtime.launch import default_env, free_port

    port = free_port()
    procs = []
    for r in range(ranks):
        env = dict(os.environ, **default_env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(mode)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True))
    outs = []
    for p in procs:
        so, _ = p.communicate()
        line = [ln for ln in so.splitlines() if ln.startswith("RESULT ")]
        outs.append(json.loads(line[-1][7:]) if line else {"error": f"rc={p.returncode}"})
    return outs


def _worker(mode: dict) -> None:
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if mode["kind"] == "ds":
        res = time_deepspeed(mode["stage"], mode["steps"], mode["batch"], mode["crop"], mode["backbone"],
                             mode.get("full"), mode.get("ckpt", False), mode.get("precision", "fp32"))
    else:
        res = time_plain_torch(mode["steps"], mode["batch"], mode["crop"], mode["backbone"])
        res["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--skip-zero", action="store_true")
    ap.add_argument("--gpu-only", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        _worker(json.loads(a.worker))
        return 0
    import torch

    backbone = _perceptual_backbone()
    print(f"# pairforge training benchmark — torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"perceptual backbone: {backbone}, batch {a.batch}/rank, {a.crop}² HR crops, tiny preset")
    base = {"steps": a.steps, "batch": a.batch, "crop": a.crop, "backbone": backbone}

    consumption = None
    if not a.gpu_only:
        # 1. ZeRO stages, 2 gloo ranks
        if not a.skip_zero:
            rows = []
            for stage in (0, 1, 2, 3):
                res = _run_ranks({**base, "kind": "ds", "stage": stage}, a.ranks, 1)
                if "error" in res[0]:
                    rows.append([stage, a.ranks, "failed", res[0]["error"], ""])
                    continue
                rows.append([stage, a.ranks, res[0]["step_s"], sum(r["samples_per_s"] for r in res) / len(res),
                             max(r["peak_rss_mb"] for r in res)])
            _table(f"ZeRO stages, tiny, CPU, {a.ranks} gloo ranks × 1 thread",
                   ["ZeRO stage", "ranks", "step s (median)", "samples/s (all ranks)", "peak RSS / rank MB"], rows)

        # 3. DeepSpeed overhead vs plain torch, one process, equal batch and threads
        threads = max(1, (os.cpu_count() or 1) - 1)
        plain = _run_ranks({**base, "kind": "plain"}, 1, threads)[0]
        rows = [["plain torch", plain["step_s"], plain["samples_per_s"], 0.0]]
        for stage in (0, 2):
            ds = _run_ranks({**base, "kind": "ds", "stage": stage}, 1, threads)[0]
            rows.append([f"DeepSpeed ZeRO-{stage}", ds["step_s"], ds["samples_per_s"],
                         100 * (ds["step_s"] / plain["step_s"] - 1)])
            if stage == 2:
                consumption = ds["samples_per_s"]
        _table(f"DeepSpeed overhead vs plain torch (1 process, {threads} thread(s), target ≤ 10 %)",
               ["loop", "step s (median)", "samples/s", "overhead %"], rows)

        # 2. loader throughput vs consumption
        from pairforge.pipeline import SynthConfig, synth
        cfg = SynthConfig.from_dict({
            "dataset": {"degradation": "realesrgan-x4plus", "seed": 0, "views": 2, "images_per_shard": 2,
                        "patch": {"size": 128, "per_image": 8}},
            "run": {"executor": "inline", "progress": False, "device": "cpu"}})
        with tempfile.TemporaryDirectory() as tmp:
            res = synth("bundled", tmp, cfg)
            rows = []
            for w in (0, 1, 2):
                r = time_loader(res.url, res.manifest["shards"], a.batch, w, a.crop, 40)
                ratio = r["samples_per_s"] / consumption if consumption else float("nan")
                rows.append([w, r["samples_per_s"], consumption or float("nan"), ratio])
            _table("Data loader (128² PNG pairs, 2 LR views, crop + bicubic ↑) vs trainer consumption "
                   "(ZeRO-2, 1 rank; target ≥ 3×)",
                   ["loader workers", "loader samples/s", "trainer samples/s", "ratio"], rows)

    # 4. GPU, full size
    if torch.cuda.is_available():
        rows = []
        for disc in ("sd21", "sdxl"):
            for ckpt in (False, True):
                for stage in (0, 1, 2, 3):
                    res = _run_ranks({"kind": "ds", "stage": stage, "steps": 5, "batch": 2, "crop": 512,
                                      "backbone": backbone, "full": disc, "ckpt": ckpt, "precision": "bf16"}, 1, 4)[0]
                    if "error" in res:
                        rows.append([disc, ckpt, stage, "failed (OOM?)", ""])
                    else:
                        rows.append([disc, ckpt, stage, res["step_s"], res["peak_gpu_gb"]])
        _table(f"Full-size architectures (random init), 512², bf16, batch 2, {torch.cuda.get_device_name()}",
               ["discriminator", "grad ckpt", "ZeRO", "step s", "peak GPU GiB"], rows)
    else:
        print("\n(no CUDA device: full-size GPU benchmark skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
