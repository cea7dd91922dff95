"""`pairforge train`: train the D3SR one-step SR model on pairforge shards.

Embedded default: ``--ranks N`` local processes (gloo on CPU, nccl on GPUs). Under the
DeepSpeed launcher or torchrun (RANK/WORLD_SIZE already set) the trainer runs in-process;
``--print-launch hostfile|torchrun`` prints those cluster command lines.

``--out`` has one owner at a time (``DIR/run.lock``): a second train on it exits with status 3
and names the owner while the first is alive; a dead owner's lock is taken over.
"""
from __future__ import annotations

import argparse
import os
import sys

#: exit status when --out belongs to another live `pairforge train` (see training/runlock.py)
EXIT_RUN_DIR_IN_USE = 3


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a one-step diffusion SR model on pairforge shards",
                              description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="tiny | d3sr-sd21 | d3sr-sdxl")
    src.add_argument("--config", help="YAML config file (may start from `base: PRESET`)")
    p.add_argument("--data", required=True, help="dataset URL (local path, file:// or s3://) with manifest.json")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoints/, export/, report)")
    p.add_argument("--steps", type=int, help="optimisation steps (overrides the config)")
    p.add_argument("--ranks", type=int, default=1, help="local ranks to spawn (default 1)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="ZeRO stage for both engines")
    p.add_argument("--resume", choices=["auto", "none"], default="none",
                   help="auto: continue from DIR/checkpoints/latest.json if present")
    p.add_argument("--batch-size", type=int, help="micro-batch per rank")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--workers", type=int, help="dataloader workers per rank")
    p.add_argument("--crop-size", type=int, help="HR crop side")
    p.add_argument("--val-every", type=int, help="validate every N steps (0 = off)")
    p.add_argument("--val-data", help="separate validation dataset URL (else the last data.val_shards shards are held out, or the last samples of a dataset with too few shards)")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, help="log every N steps")
    p.add_argument("--perceptual-backbone", choices=["imagenet", "random"],
                   help="random only for smoke tests; reports then say so")
    p.add_argument("--weights-dir", help="perceptual weights folder (default $PAIRFORGE_WEIGHTS or ~/.cache/pairforge/weights)")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set generator.timestep=299 (YAML value)")
    p.add_argument("--print-launch", choices=["hostfile", "torchrun"],
                   help="print the cluster launch command for these arguments and exit")
    p.add_argument("--hostfile", default="clusters/templates/hostfile.example")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher
    return p


def _overrides(args) -> dict:
    import yaml

    from pairforge.training.config import set_dotted

    ov: dict = {}
    simple = {"steps": "steps", "zero_stage": "engine.zero_stage", "batch_size": "data.batch_size",
              "grad_accum": "engine.grad_accum", "precision": "engine.precision", "workers": "data.num_workers",
              "crop_size": "data.crop_size", "val_every": "log.val_every", "ckpt_every": "log.ckpt_every",
              "log_every": "log.log_every", "perceptual_backbone": "loss.perceptual_backbone",
              "weights_dir": "loss.weights_dir", "seed": "seed", "val_data": "data.val_data"}
    for attr, key in simple.items():
        v = getattr(args, attr, None)
        if v is not None:
            set_dotted(ov, key, v)
    for item in args.set:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        set_dotted(ov, k.strip(), yaml.safe_load(v))
    return ov


def _cluster_args(argv: list[str]) -> list[str]:
    """The user's train arguments minus the launch-only ones."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--ranks", "--print-launch", "--hostfile"):
            skip = True
            continue
        if a.startswith(("--ranks=", "--print-launch=", "--hostfile=")) or a == "train":
            continue
        out.append(a)
    return out


def run(args) -> int:
    from pairforge.training.config import ConfigError, load_config

    try:
        ov = _overrides(args)
        cfg = load_config(preset=args.preset, overrides=ov) if args.preset else load_config(args.config, overrides=ov)
    except ConfigError as exc:
        print(f"pairforge train: invalid config: {exc}", file=sys.stderr)
        return 2
    if args.print_launch:
        from pairforge.training.launch import deepspeed_command, torchrun_command

        targs = _cluster_args(sys.argv[1:])
        if args.print_launch == "hostfile":
            print(deepspeed_command(args.hostfile, targs))
        else:
            print(torchrun_command(targs, nnodes=int(os.environ.get("NNODES", 1)),
                                   nproc_per_node=int(os.environ.get("GPUS_PER_NODE", 1))))
        return 0
    from pairforge.training import RunDirLocked
    from pairforge.training.preflight import DatasetMismatch

    resume = None if args.resume == "none" else args.resume
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and args.ranks == 1:
            return _run_as_rank(cfg, args, resume)
        return _run_local_ranks(cfg, args, resume)
    except RunDirLocked as exc:
        print(f"pairforge train: {exc}", file=sys.stderr)
        return EXIT_RUN_DIR_IN_USE
    except (DatasetMismatch, FileNotFoundError) as exc:
        print(f"pairforge train: {exc}", file=sys.stderr)
        return 2


def _run_as_rank(cfg, args, resume: str | None) -> int:
    """Launched by deepspeed/torchrun: this process is one rank (rank 0 locks --out)."""
    from pairforge.training.launch import default_env
    from pairforge.training.trainer import run as run_rank

    for k, v in default_env().items():
        os.environ.setdefault(k, v)
    run_rank(cfg, args.data, args.out, resume, args.val_data)
    return 0


def _run_local_ranks(cfg, args, resume: str | None) -> int:
    """The embedded default: this process is the launcher of ``--ranks`` local ranks."""
    from pairforge.training import train

    res = train(cfg, args.data, args.out, ranks=args.ranks, resume=resume, val_data=args.val_data)
    if res["rc"] != 0:
        print(f"pairforge train: a rank failed (exit code {res['rc']})", file=sys.stderr)
        return 1
    print(f"pairforge train: done → {res['out']} (report: {res['report']}, export: {res['export']})")
    return 0
