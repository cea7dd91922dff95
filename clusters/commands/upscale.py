"""``pairforge upscale``: super-resolve images with a trained generator's ``export/`` folder, or with
a published SR checkpoint (Real-ESRGAN, ESRGAN, SwinIR, HAT, … ``.pth``/``.safetensors``, recognised
by spandrel) through the same tiling, colour fix and 8-bit rounding.

INPUT is an image file, a folder (its images, sorted by name) or a glob. OUTPUT is a file when
INPUT names one file (unless OUTPUT is a folder or has no suffix), otherwise a folder that
receives one PNG per input (sub-folders of a glob are kept). Images are read as ``eval`` and
``synth`` read them (:mod:`pairforge.training.model.pixels`: alpha over white, 16-bit scaled, EXIF
rotation applied, corrupt data refused). Of a folder or glob, an input that cannot be read is
named on stderr and skipped, the others are written, and the command exits 1; it exits 0 only
when every input was written, and 2 on bad arguments, a single INPUT file that cannot be read,
or an export that does not load (before any model loads).

Existing outputs are never replaced without ``--overwrite`` (the command names them and exits 2
before loading the model), and an input is never written over, not even with ``--overwrite``: an
output that is an input, or an output folder that is the input folder, is refused.

How tiling and colour correction work: :mod:`pairforge.training.model.inference` and
:mod:`pairforge.training.model.colorfix`.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

from pairforge.errors import EXIT_FAILED, UsageError


def add_parser(subparsers) -> argparse.ArgumentParser:
    from pairforge.training.model.colorfix import COLOR_FIXES
    from pairforge.training.model.inference import DEFAULT_OVERLAP, DEFAULT_SCALE, DEFAULT_TILE, DEFAULT_VAE_TILE

    p = subparsers.add_parser(
        "upscale", help="super-resolve images with an exported generator or a published checkpoint (tiled, any size)",
        description="Super-resolve an image, a folder of images or a glob with a generator exported by "
        "`pairforge train` (RUN/export) or a published SR checkpoint. Output size is exactly scale × input size.")
    p.add_argument("input", help="an image file, a folder of images, or a glob (quote it)")
    p.add_argument("output", help="output file (when INPUT is one file; its suffix sets the format) or folder")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="the export/ folder of a training run, or a published SR checkpoint (.pth/.safetensors)")
    p.add_argument("--scale", type=int, default=None,
                   help=f"SR factor (default: the model's, else {DEFAULT_SCALE}; a checkpoint runs at its own only)")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE,
                   help="tile side in output pixels (an export's UNet tiles, in latent space; a checkpoint's "
                        f"network sees tile/scale LR pixels); 0: the whole image at once (default {DEFAULT_TILE})")
    p.add_argument("--tile-overlap", type=int, default=None,
                   help=f"output pixels neighbouring tiles share and blend over (default: a quarter of --tile, "
                        f"at most {DEFAULT_OVERLAP})")
    p.add_argument("--vae-tile", type=int, default=DEFAULT_VAE_TILE,
                   help=f"VAE encode/decode tile side in output pixels; 0: whole (default {DEFAULT_VAE_TILE})")
    p.add_argument("--color-fix", choices=COLOR_FIXES, default="none",
                   help="match colours to the bicubic input: adain (global mean/std per channel) or wavelet "
                        "(low frequencies from the input, detail from the model); default none")
    p.add_argument("--batch-size", type=int, default=1, help="tiles per model call (default 1)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when stderr is not a tty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that already exist (never an input: that is always refused)")
    return p


def _is_image(path: Path) -> bool:
    from pairforge.training.model.pixels import is_image_name

    return path.is_file() and is_image_name(path.name)


def find_inputs(spec: str) -> tuple[list[Path], Path | None]:
    """``(images, root)``: one file (``root`` None), a folder's images, or a glob's image files
    (``root``: the folder output names are taken relative to)."""
    path = Path(spec)
    if path.is_file():
        return [path], None
    if path.is_dir():
        return sorted(p for p in path.iterdir() if _is_image(p)), path
    matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if _is_image(Path(m)))
    root = Path(os.path.commonpath([str(m.parent) for m in matches])) if matches else None
    return matches, root


def output_paths(inputs: list[Path], root: Path, out_dir: Path) -> list[Path]:
    """One PNG per input under ``out_dir``, mirroring sub-folders of ``root``; an input whose
    name without suffix clashes with another's keeps its suffix (``a.jpg`` → ``a.jpg.png``)."""
    rel = [p.relative_to(root) if p.is_relative_to(root) else Path(p.name) for p in inputs]
    plain = [r.with_suffix(".png") for r in rel]
    clash = {p for p in plain if plain.count(p) > 1}
    return [out_dir / (r.with_name(r.name + ".png") if p in clash else p) for r, p in zip(rel, plain)]


def plan(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(input, output) pairs; raises :class:`UsageError` when INPUT matches nothing."""
    inputs, root = find_inputs(args.input)
    if not inputs:
        raise UsageError(f"no images found at {args.input!r}")
    out = Path(args.output)
    if root is None:  # one file: OUTPUT is a file, or a folder (existing, or named without a suffix)
        dst = out / (inputs[0].stem + ".png") if out.is_dir() or not out.suffix else out
        return [(inputs[0], dst)]
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; several inputs need an output folder")
    if out.resolve() == root.resolve():
        raise UsageError(f"the output folder {out} is the input folder: the results would land among (and could "
                         "replace) the inputs; choose another output folder")
    return list(zip(inputs, output_paths(inputs, root, out)))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and ``..`` included)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_outputs(pairs: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Before any model loads: no output may be an input (ever), and no output may exist already
    unless ``overwrite``; each a :class:`UsageError` naming the files. Inputs are compared by
    resolved path and by file identity (hard links), in one pass over a folder of any size."""
    paths = {src.resolve() for src, _ in pairs}
    ids = {_file_id(src) for src, _ in pairs} - {None}
    onto_input = [dst for _, dst in pairs if dst.resolve() in paths or _file_id(dst) in ids]
    if onto_input:
        raise UsageError(f"output {_names(onto_input)} would overwrite an input (refused even with --overwrite); "
                         "choose another output")
    directories = [dst for _, dst in pairs if dst.is_dir()]
    if directories:
        raise UsageError(f"output {_names(directories)} is a folder, not a file that can be written")
    existing = [dst for _, dst in pairs if dst.exists()]
    if existing and not overwrite:
        raise UsageError(f"{len(existing)} output file(s) exist already: {_names(existing)}; pass --overwrite to "
                         "replace them")


def _names(paths: list[Path], most: int = 5) -> str:
    more = f" (+{len(paths) - most} more)" if len(paths) > most else ""
    return ", ".join(str(p) for p in paths[:most]) + more


def _check_args(args: argparse.Namespace) -> None:
    if args.scale is not None and args.scale < 1:
        raise UsageError("--scale must be ≥ 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be ≥ 1")
    overlap = args.tile_overlap  # None: upscale_tensor's default, a quarter of the tile
    if overlap is not None and (overlap < 0 or (args.tile > 0 and 2 * overlap > args.tile)):
        raise UsageError("--tile-overlap must be between 0 and half of --tile")
    from pairforge.training.model.inference import check_device
    from pairforge.training.model.sr_models import check_model_path

    check_model_path(args.model)  # ExportError/ModelFileError (UsageErrors): one line for what is no model

    args.device = check_device(args.device)  # DeviceUnavailable (a UsageError): one line, exit 2


def _upscale_one(model, src: Path, dst: Path, scale: int, args: argparse.Namespace) -> str | None:
    """Read, upscale, write one image; returns why it failed, or None."""
    import torch

    from pairforge.training.model.inference import read_image, write_image
    from pairforge.training.model.pixels import UnreadableImage

    if _same_file(dst, src):  # check_outputs refused this already; kept as the last guard before a write
        return f"output {dst} would overwrite the input"
    try:
        lr = read_image(src)
    except UnreadableImage as e:  # the decoder's one line: corrupt, not_an_image, too_large …
        return str(e)
    try:
        sr = model.upscale(lr, scale, tile=args.tile, overlap=args.tile_overlap, batch=args.batch_size,
                           vae_tile=args.vae_tile, color_fix=args.color_fix, bf16=False if args.fp32 else None)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return f"out of memory on {src} ({lr.shape[-1]}×{lr.shape[-2]}); try a smaller --tile / --vae-tile"
    try:
        write_image(sr, dst)
    except (OSError, ValueError, KeyError) as e:  # PIL: KeyError/ValueError for an unknown suffix
        return f"cannot write {dst}: {e}"
    return None


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pairforge.training.model.inference import DEFAULT_SCALE
    from pairforge.training.model.pixels import read_image
    from pairforge.training.model.sr_models import ModelFileError, load_model

    # everything that can be wrong with the arguments is found here, before any image is written:
    # UsageError (its subclasses UnreadableImage, ExportError, DeviceUnavailable too) exits 2
    _check_args(args)
    pairs = plan(args)
    check_outputs(pairs, args.overwrite)
    if len(pairs) == 1 and Path(args.input).is_file():
        read_image(pairs[0][0])  # the one file the user named: unreadable is bad usage, checked before the model loads
    model = load_model(args.model, args.device)  # a checkpoint that is no SR model: ModelFileError, exit 2
    if model.kind == "published checkpoint" and args.scale not in (None, model.scale):
        raise ModelFileError(f"{args.model} is a ×{model.scale} model; it cannot upscale ×{args.scale}")
    scale = args.scale or model.scale or DEFAULT_SCALE
    failed = []
    bar = tqdm(pairs, unit="img", desc="upscale", file=sys.stderr, disable=True if args.no_progress else None)
    for src, dst in bar:
        bar.set_postfix_str(src.name, refresh=False)
        why = _upscale_one(model, src, dst, scale, args)
        if why is None:
            tqdm.write(str(dst), file=sys.stdout)
        else:
            failed.append(src)
            tqdm.write(f"pairforge upscale: {why} — skipped", file=sys.stderr)
    bar.close()
    if failed:
        print(f"pairforge upscale: {len(failed)} of {len(pairs)} input(s) failed: "
              + ", ".join(str(p) for p in failed), file=sys.stderr)
        return EXIT_FAILED
    return 0
