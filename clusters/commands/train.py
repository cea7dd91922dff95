"""`pairforge train`: train the D3SR one-step SR model on pairforge shards.

Embedded default: ``--ranks N`` local processes (gloo on CPU, nccl on GPUs). Under the
DeepSpeed launcher or torchrun (RANK/WORLD_SIZE already set) the trainer runs in-process;
``--print-launch hostfile|torchrun`` prints those cluster command lines.

Before any rank starts (seconds, one message, exit 2): the dataset exists, holds pairs and
suits the crop, and every shard its manifest lists is in the store at its recorded size; ``--out`` holds no previous run unless ``--resume``/``--overwrite``; a resumed
ZeRO checkpoint gets the rank count it was written with; the pretrained folders and the
perceptual weights the config needs are present.

``--out`` has one owner at a time (``DIR/run.lock``): a second train on it exits with status 3
and names the owner while the first is alive; a dead owner's lock is taken over.

Ctrl-C stops every rank and ends with one line: the checkpoint kept (or none) and the exact
command that continues the run (these arguments with ``--resume auto``); exit status 130.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator

from pairforge.errors import EXIT_IN_USE, EXIT_INTERRUPTED, UsageError

#: exit status when --out belongs to another live `pairforge train` (see training/runtime/runlock.py)
EXIT_RUN_DIR_IN_USE = EXIT_IN_USE
EXIT_CODES = ("exit status: 0 trained; 1 a rank failed (damaged data found while training included); 2 bad "
              "arguments or environment, a dataset shard missing or resized included (found before any rank "
              f"starts); {EXIT_RUN_DIR_IN_USE} the run directory is in use by another live train; "
              f"{EXIT_INTERRUPTED} interrupted (Ctrl-C): the last line says which checkpoint was kept and the "
              "command that resumes from it")


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pairforge.clusters.presets_catalog import names_help

    p = subparsers.add_parser("train", help="train a one-step diffusion SR model on pairforge shards",
                              description=__doc__.split("\n\n")[0] + " Everything that can be checked "
                              "(dataset, run directory, checkpoint rank count, pretrained and perceptual "
                              "weights) is checked before any rank starts.",
                              epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help=f"training preset: {names_help('training')} (see `pairforge presets`)")
    src.add_argument("--config", help="YAML config file (may start from `base: PRESET`)")
    p.add_argument("--data", required=True, help="dataset URL (local path, file:// or s3://) with manifest.json")
    p.add_argument("--out", required=True, help="run directory (metrics.jsonl, checkpoints/, export/, report)")
    p.add_argument("--steps", type=int, help="optimisation steps (overrides the config)")
    p.add_argument("--ranks", type=int, default=None,
                   help="local ranks to spawn (default 1; with --resume, the rank count of the checkpoint); "
                        "with --print-launch torchrun, ranks per node (default $GPUS_PER_NODE, else every GPU)")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="ZeRO stage for both engines")
    p.add_argument("--resume", nargs="?", const="auto", choices=["auto", "none"], default="none",
                   help="continue from DIR/checkpoints/latest.json if present (`--resume` alone means auto; "
                        "none, the default, starts afresh and refuses a directory that holds a previous run)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a directory that holds a previous run, deleting its checkpoints, "
                        "metrics and export first")
    p.add_argument("--batch-size", type=int, help="micro-batch per rank")
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="engine precision (overrides the config)")
    p.add_argument("--workers", type=int, help="dataloader workers per rank")
    p.add_argument("--crop-size", type=int, help="HR crop side (at most the dataset's patch size)")
    p.add_argument("--val-every", type=int, help="validate every N steps (0 = off)")
    p.add_argument("--val-data", help="separate validation dataset URL (else the last data.val_shards shards are held out, or the last samples of a dataset with too few shards)")
    p.add_argument("--ckpt-every", type=int, help="checkpoint every N steps")
    p.add_argument("--log-every", type=int, help="log every N steps")
    p.add_argument("--perceptual-backbone", choices=["imagenet", "random"],
                   help="random only for smoke tests; reports then say so")
    p.add_argument("--weights-dir", help="perceptual weights folder (default $PAIRFORGE_WEIGHTS or ~/.cache/pairforge/weights)")
    p.add_argument("--seed", type=int, help="random seed (overrides the config)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set generator.timestep=299 (YAML value)")
    launch = p.add_argument_group("cluster launch (--print-launch prints the command and exits; see docs/clusters.md)")
    launch.add_argument("--print-launch", choices=["hostfile", "torchrun"],
                        help="print the DeepSpeed-launcher (hostfile) or torchrun command that trains with these "
                             "arguments, and exit")
    launch.add_argument("--hostfile", help="DeepSpeed hostfile (`HOST slots=N` per node; ranks = all slots), "
                                           "needed by --print-launch hostfile")
    launch.add_argument("--nnodes", type=int, default=None,
                        help="nodes for --print-launch torchrun (default $NNODES or 1); --ranks is then per node")
    launch.add_argument("--master-addr", default=None,
                        help="address of the node hosting the rendezvous (needed with --nnodes > 1; "
                             "default $MASTER_ADDR)")
    launch.add_argument("--master-port", type=int, default=29500, help="rendezvous port (default %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object, the last line of stdout (rank logs go to stderr)")
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
            from pairforge.training.config import ConfigError

            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        set_dotted(ov, k.strip(), yaml.safe_load(v))
    return ov


#: flags that only shape the printed launch command; the ranks it starts never see them
LAUNCH_ONLY = ("--ranks", "--print-launch", "--hostfile", "--nnodes", "--master-addr", "--master-port")


def _cluster_args(argv: list[str]) -> list[str]:
    """The user's ``train`` arguments (after the subcommand) minus the launch-only ones; a
    ``-v`` given before ``train`` moves after it (both parsers take it)."""
    if "train" not in argv:
        return list(argv)
    i = argv.index("train")
    out = [a for a in argv[:i] if a in ("-v", "--verbose")]
    rest = iter(argv[i + 1:])
    for a in rest:
        if a in LAUNCH_ONLY:
            next(rest, None)  # its value
        elif not a.startswith(tuple(f"{flag}=" for flag in LAUNCH_ONLY)):
            out.append(a)
    return out


def run(args) -> int:
    """``pairforge train``; a Ctrl-C at any point (imports and checks included) ends with the
    one interrupt line and exit 130."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        return _interrupted(args, _is_cluster_rank(args))


def _is_cluster_rank(args) -> bool:
    """Started by torchrun or the DeepSpeed launcher: this process is one rank."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and args.ranks in (None, 1)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """A Ctrl-C inside the block is raised as ``KeyboardInterrupt`` when the block ends. For
    ``import torch``: interrupted inside its C++ module initialisation, the process aborts
    ("terminate called after throwing an instance of 'pybind11::error_already_set'")."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _run(args) -> int:
    with _interrupts_deferred():
        import torch  # noqa: F401 - every path below needs it; imported here, where Ctrl-C cannot abort it

    from pairforge.training.config import ConfigError, load_config

    try:
        ov = _overrides(args)
        cfg = load_config(preset=args.preset, overrides=ov) if args.preset else load_config(args.config, overrides=ov)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from exc
    if args.print_launch:
        return _print_launch(cfg, args)
    cluster = _is_cluster_rank(args)
    ranks = preflight(cfg, args, cluster)  # UsageError: one line, exit 2, before any rank starts
    resume = "auto" if args.resume == "auto" else None
    try:
        with _stdout_to_stderr(args.json):  # --json: stdout carries only the result
            res = _run_as_rank(cfg, args, resume) if cluster else _run_local_ranks(cfg, args, resume, ranks)
    except KeyboardInterrupt:  # the ranks are stopped (training/runtime/launch.py spawn_local)
        return _interrupted(args, cluster, ranks)
    # RunDirLocked (3: another train took --out since the checks) ends the command through the CLI's
    # one mapping (pairforge/errors.py)
    if cluster and os.environ.get("RANK") != "0":
        return 0 if res["ok"] else 1  # rank 0 reports for the run
    return _report(res, args)


def _print_launch(cfg, args) -> int:
    """Print the launcher command that runs these arguments on a cluster (stdout: the command
    only, so ``$(pairforge train ... --print-launch torchrun)`` works). Exit 2 with one line when
    it cannot be composed (no hostfile, several nodes without a rendezvous address) or when the
    ranks it starts would refuse anyway (the checks every rank makes first: dataset, run
    directory, pretrained folders, perceptual weights)."""
    command = _launch_command(args)  # LaunchError and the checks' UsageError: one line, exit 2
    preflight(cfg, args, cluster=True)
    print(command)
    return 0


def _launch_command(args) -> str:
    """The torchrun or DeepSpeed-launcher line for these arguments; raises LaunchError."""
    from pairforge.training.runtime.launch import LaunchError, deepspeed_command, read_hostfile, torchrun_command

    targs = _cluster_args(sys.argv[1:])
    if args.print_launch == "hostfile":
        if not args.hostfile:
            raise LaunchError("--print-launch hostfile needs --hostfile FILE (one `HOST slots=N` line per node, "
                              "e.g. clusters/templates/hostfile.example)")
        slots = sum(read_hostfile(args.hostfile).values())
        if args.ranks not in (None, slots):
            raise LaunchError(f"--ranks {args.ranks}, but {args.hostfile} lists {slots} slot(s): the DeepSpeed "
                              "launcher starts one rank per slot (edit the hostfile's slots= instead)")
        return deepspeed_command(args.hostfile, targs, master_addr=args.master_addr, master_port=args.master_port)
    nnodes = args.nnodes if args.nnodes is not None else int(os.environ.get("NNODES", "1"))
    per_node = args.ranks if args.ranks is not None else os.environ.get("GPUS_PER_NODE", "gpu")
    per_node = int(per_node) if str(per_node).isdigit() else per_node
    addr = args.master_addr or (os.environ.get("MASTER_ADDR") if nnodes > 1 else None)
    return torchrun_command(targs, nnodes=nnodes, nproc_per_node=per_node, master_addr=addr,
                            master_port=args.master_port)


# --------------------------------------------------------------------------- checks before any rank
def preflight(cfg, args, cluster: bool) -> int:
    """:func:`training.loop.preflight.preflight` for these arguments (the checks ``train()`` makes too);
    the number of local ranks to start. Raises a UsageError naming what to change."""
    from pairforge.training.loop.preflight import preflight as check_all

    return check_all(cfg, args.data, args.out, resume=args.resume, overwrite=args.overwrite, ranks=args.ranks,
                     cluster=cluster, resume_command=_command_with_ranks)


def _command_with_ranks(ranks: int) -> str:
    """This command line with ``--ranks`` set to ``ranks``."""
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--ranks":
            skip = True
        elif not a.startswith("--ranks="):
            argv.append(a)
    return shlex.join(["pairforge", *argv, "--ranks", str(ranks)])


# --------------------------------------------------------------------------- running
@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """Send this process's and its ranks' stdout (file descriptor 1) to stderr while enabled."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _run_as_rank(cfg, args, resume: str | None) -> dict:
    """Launched by deepspeed/torchrun: this process is one rank (rank 0 locks --out)."""
    from pairforge.training.runtime.rank import bootstrap_rank

    if args.overwrite and os.environ.get("RANK") == "0":
        _clear_locked(args.out)  # before the rank log is opened inside --out
    bootstrap_rank(args.out, cfg.data.num_workers)
    from pairforge.training.loop.trainer import run as run_rank

    run_rank(cfg, args.data, args.out, resume, args.val_data)
    return _result(args.out, 0, int(os.environ["WORLD_SIZE"]))


def _clear_locked(out: str) -> None:
    """--overwrite under a cluster launcher: rank 0 deletes the previous run while holding the
    run lock (never a live run's files); the trainer then locks the directory for the run."""
    from pairforge.training import acquire_run_dir, clear_run_dir

    with acquire_run_dir(out):
        clear_run_dir(Path(out))


def _run_local_ranks(cfg, args, resume: str | None, ranks: int) -> dict:
    """The embedded default: this process is the launcher of ``ranks`` local ranks (the checks
    :func:`preflight` made are not made again)."""
    from pairforge.training import run_checked

    res = run_checked(cfg, args.data, args.out, ranks=ranks, resume=resume, val_data=args.val_data,
                      overwrite=args.overwrite)
    return _result(args.out, res["rc"], ranks)


def _result(out: str, rc: int, ranks: int) -> dict:
    """What the run produced: exit code of the ranks, where things are, the last logged step."""
    outp = Path(out)
    metrics = outp / "metrics.jsonl"
    last = None
    if metrics.is_file():
        lines = [line for line in metrics.read_text().splitlines() if line.strip()]
        with contextlib.suppress(ValueError, IndexError):
            last = json.loads(lines[-1]).get("step")
    return {"ok": rc == 0, "rc": rc, "out": str(outp), "ranks": ranks, "step": last,
            "report": str(outp / "report.md"), "metrics": str(metrics), "export": str(outp / "export")}


def resume_command(argv: list[str] | None = None) -> str:
    """This command line as the one that continues its run: ``--resume auto`` instead of any
    ``--resume``/``--overwrite`` (``--overwrite`` would delete what was kept)."""
    out, rest = [], iter(sys.argv[1:] if argv is None else argv)
    for a in rest:
        if a == "--resume":
            nxt = next(rest, None)
            if nxt is not None and nxt not in ("auto", "none"):
                out.append(nxt)  # `--resume` alone, followed by another flag
        elif a != "--overwrite" and not a.startswith("--resume="):
            out.append(a)
    return shlex.join(["pairforge", *out, "--resume", "auto"])


def kept_checkpoint(out: str | os.PathLike) -> int | None:
    """The step of the newest intact checkpoint in ``out`` (what ``--resume auto`` continues
    from), or None."""
    ckpt = Path(out) / "checkpoints"
    if not ckpt.is_dir():
        return None
    try:
        from pairforge.training.loop.checkpoint import newest_intact
    except Exception:  # noqa: BLE001 - Ctrl-C cut `import torch` short: it cannot be imported again here
        return _latest_written(ckpt)
    try:
        found = newest_intact(ckpt)
    except OSError:
        return None
    return None if found is None else found.step


def _latest_written(ckpt: Path) -> int | None:
    """The step ``latest.json`` names (the checkpoint saved last), read without torch."""
    try:
        return int(json.loads((ckpt / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _interrupted(args, cluster: bool, ranks: int | None = None) -> int:
    """Ctrl-C: one line saying what was kept and the command that continues (exit 130). Under a
    cluster launcher only rank 0 says it."""
    if cluster and os.environ.get("RANK", "0") != "0":
        return EXIT_INTERRUPTED
    if getattr(args, "print_launch", None):  # nothing ran
        print("pairforge train: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    step = kept_checkpoint(args.out)
    kept = (f"kept the checkpoint at step {step} in {Path(args.out) / 'checkpoints'}" if step is not None
            else "no checkpoint was kept (the run starts again from step 0)")
    print(f"pairforge train: interrupted; {kept}; continue with: {resume_command()}", file=sys.stderr, flush=True)
    if args.json:
        res = _result(args.out, EXIT_INTERRUPTED, ranks or args.ranks or 1)
        print(json.dumps({**res, "interrupted": True, "checkpoint_step": step}), flush=True)
    return EXIT_INTERRUPTED


def _report(res: dict, args) -> int:
    if res["rc"] != 0:
        print(f"pairforge train: a rank failed (exit code {res['rc']})", file=sys.stderr)
    elif not args.json:
        print(f"pairforge train: done → {res['out']} (report: {res['report']}, export: {res['export']})")
    if args.json:
        print(json.dumps(res))
    return 0 if res["rc"] == 0 else 1
