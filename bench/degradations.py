"""Throughput benchmark: pairforge's ``Degrader`` against the naive reference chain.

    python bench/degradations.py                        # CPU, defaults (≈15 min on 2 cores)
    python bench/degradations.py --device cuda --batches 16,64,256
    python bench/degradations.py --presets osediff --batches 16 --repeats 2 --json out.json

For every preset / HR size / batch size it measures pairs per second of

* pairforge: ``Degrader(cfg, device)`` with each JPEG backend (``real`` and ``differentiable``),
  where ``cfg = load_preset(name)`` with only the JPEG-backend field replaced;
* the naive baseline (``bench/naive_reference.py``): the BasicSR/Real-ESRGAN chain as written
  (per-batch choices, full 2-D 51x51 USM through BasicSR's ``filter2D``, per-sample host syncs,
  numpy kernels per sample); for USM presets also "naive-grouped", the same chain with the USM
  as a grouped convolution (a faster CPU form the reference does not use), so that no
  speed-up is credited to a slow convolution path alone.

HR batches are uint8 crops of scikit-image's sample photos, already on the device; LR stays on
the device. Each configuration gets one warm-up call, then timed calls in interleaved rounds
until at least ``--repeats`` calls and ``--min-pairs`` pairs are done and every contender's
mean call time is known to ``--target-rse`` (10%), within ``--max-seconds`` per contender
(at least one call). Call ``r`` of every configuration uses seed ``r``, so the naive
baseline's per-batch choices follow the same sequence at every batch size. Those choices
make its calls vary up to 20x (osediff: 0.3-6 s at batch 16), so its mean needs dozens of
calls; the table prints each speed-up with its 95% interval.

Two more tables give the time per stage: pairforge's ``Degrader(cfg, device, profile=True)``
(``deg.last_stage_times``) and the naive chain's own instrumentation. Timings are never asserted
anywhere; targets are printed beside the results.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# pairforge is imported as the installed `pairforge.*` (never from the repository root), so this
# file's folder on sys.path shadows nothing; the naive baseline is this folder's sibling module.
if __package__:  # python -m bench.degradations
    from .naive_reference import STAGES as NAIVE_STAGES
    from .naive_reference import NaiveDegrader, settings_for
else:  # python bench/degradations.py: this folder is sys.path[0]
    from naive_reference import STAGES as NAIVE_STAGES
    from naive_reference import NaiveDegrader, settings_for

DEFAULT_HR = {"realesrgan-x4plus": [400, 256], "osediff": [512]}
BACKENDS = ("real", "differentiable")
# (device, preset) -> minimum speed-up over the naive baseline
SPEEDUP_TARGETS = {("cpu", "realesrgan-x4plus"): 10.0, ("cpu", "osediff"): 3.0}
# (device, preset, hr, backend) -> minimum pairs/s
RATE_TARGETS = {("cuda", "realesrgan-x4plus", 256, "real"): 5000.0,
                ("cuda", "realesrgan-x4plus", 256, "differentiable"): 15000.0}


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
def _photos() -> list[np.ndarray]:
    try:
        from skimage import data
        names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina",
                 "hubble_deep_field", "colorwheel", "cat"]
        out = []
        for n in names:
            fn = getattr(data, n, None)
            if fn is None:
                continue
            try:
                im = fn()
            except Exception:
                continue
            if im.ndim == 3 and im.shape[2] >= 3:
                out.append(np.ascontiguousarray(im[..., :3]))
        if out:
            return out
    except Exception:
        pass
    # fallback: smooth random colour fields
    g = np.random.default_rng(0)
    small = g.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    return [np.asarray(F.interpolate(torch.from_numpy(s).permute(2, 0, 1)[None].float(),
                                     size=(512, 512), mode="bicubic")
                       .clamp(0, 255).byte()[0].permute(1, 2, 0)) for s in small]


_PHOTOS: list[np.ndarray] | None = None


def make_hr(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """uint8 (batch, 3, size, size) random crops of sample photos (upscaled where too small)."""
    global _PHOTOS
    if _PHOTOS is None:
        _PHOTOS = _photos()
    g = np.random.default_rng(seed)
    out = torch.empty(batch, 3, size, size, dtype=torch.uint8)
    for i in range(batch):
        im = torch.from_numpy(_PHOTOS[i % len(_PHOTOS)]).permute(2, 0, 1)
        h, w = im.shape[-2:]
        if min(h, w) < size:
            f = size / min(h, w)
            im = F.interpolate(im[None].float(), size=(max(size, round(h * f)), max(size, round(w * f))),
                               mode="bicubic", align_corners=False).clamp(0, 255).byte()[0]
            h, w = im.shape[-2:]
        y, x = int(g.integers(0, h - size + 1)), int(g.integers(0, w - size + 1))
        out[i] = im[:, y:y + size, x:x + size]
    return out


# --------------------------------------------------------------------------------------------
# pairforge config handling
# --------------------------------------------------------------------------------------------
def _find_backend_paths(d, prefix=()):
    """Paths of keys in a config dict whose name mentions 'backend' (jpeg ones first)."""
    found = []
    if isinstance(d, dict):
        for k, v in d.items():
            p = prefix + (k,)
            if isinstance(v, dict):
                found += _find_backend_paths(v, p)
            elif "backend" in str(k).lower() and (v is None or isinstance(v, str)):
                found.append(p)
    found.sort(key=lambda p: (0 if any("jpeg" in str(s).lower() for s in p) else 1, len(p)))
    return found


def _get(d, path):
    for k in path:
        d = d[k]
    return d


def with_jpeg_backend(cfg, backend: str):
    """``cfg`` with its JPEG backend set to ``backend``; None if the config has no such field."""
    d = cfg.to_dict()
    paths = _find_backend_paths(d)
    if not paths:
        return None
    path = paths[0]
    if len(path) == 1 and dataclasses.is_dataclass(cfg) and path[0] in {
            f.name for f in dataclasses.fields(cfg)}:
        new = dataclasses.replace(cfg, **{path[0]: backend})
    else:
        parent = _get(d, path[:-1])
        parent[path[-1]] = backend
        new = type(cfg).from_dict(d)
    if _get(new.to_dict(), path) != backend:
        raise RuntimeError(f"could not set JPEG backend {'.'.join(map(str, path))}={backend!r}")
    return new


def engine_info() -> dict:
    from pairforge import degradations
    files = sorted(p.name for p in Path(degradations.__file__).parent.iterdir()
                   if p.suffix == ".py" or p.is_dir() and not p.name.startswith("__"))
    stub = "TEMPORARY STUB" in (degradations.__doc__ or "")
    return {"version": getattr(degradations, "__version__", "?"), "stub": stub, "files": files}


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _add_stages(acc: dict, st: dict):
    for k, v in st.items():
        acc[k] = acc.get(k, 0.0) + float(v)


class PairforgeContender:
    """Throughput with ``Degrader(cfg, device)``; stages with ``Degrader(..., profile=True)``.

    The warm-up call is made with the profiling instance; its stage times are used only when no
    further profiled call fits the time budget (CPU only: on CUDA the first call is not typical).
    """

    def __init__(self, cfg, hr, device, args):
        from pairforge.degradations import Degrader

        self.hr, self.device, self.args, self.b = hr, device, args, hr.shape[0]
        self.deg = Degrader(cfg, device=str(device))
        try:
            self.pdeg = Degrader(cfg, device=str(device), profile=True) if args.profile_calls > 0 else None
        except TypeError:  # an engine without profiling support
            self.pdeg = None
        scale = int(getattr(cfg, "scale", 4))
        self.out_shape = (self.b, 3, hr.shape[2] // scale, hr.shape[3] // scale)
        self.warm_stages = None
        self.times = []

    def _keys(self, r):
        return [f"r{r}s{i}" for i in range(self.b)]

    def warm(self):
        d = self.pdeg or self.deg
        lr, rec = d(self.hr, keys=self._keys(0), seed=0)
        assert tuple(lr.shape) == self.out_shape and lr.dtype == torch.uint8, (lr.shape, lr.dtype)
        assert len(rec) == self.b
        _sync(self.device)
        if self.pdeg is not None:
            self.warm_stages = dict(getattr(self.pdeg, "last_stage_times", {}) or {})

    def call(self, r):
        self.deg(self.hr, keys=self._keys(r), seed=r)

    def stages(self):
        if self.pdeg is None:
            return None
        acc, n, budget = {}, 0, self.args.max_seconds / 2
        est = min(self.times) if self.times else 0.0
        cuda = self.device.type == "cuda"
        t_start = time.perf_counter()
        for i in range(self.args.profile_calls if cuda else self.args.profile_calls - 1):
            if time.perf_counter() - t_start + est > budget and (n > 0 or not cuda):
                break
            r = 10_000 + i
            self.pdeg(self.hr, keys=self._keys(r), seed=r)
            _sync(self.device)
            _add_stages(acc, getattr(self.pdeg, "last_stage_times", {}) or {})
            n += 1
        if n == 0 and self.warm_stages:
            acc, n = self.warm_stages, 1
        return {"pairs": n * self.b, "seconds": acc} if acc else None


class NaiveContender:
    """The reference chain. Call r reseeds with r, so the per-batch choices of call r are the same
    at every batch size. On CPU the timed calls are also the profiled ones (the instrumentation is
    two perf_counter calls per stage); on CUDA profiling syncs, so it runs in a separate pass."""

    def __init__(self, preset, hr, device, args, usm_conv="batch"):
        self.hr, self.device, self.args, self.b = hr, device, args, hr.shape[0]
        self.inline = device.type == "cpu"
        self.settings = settings_for(preset, usm_conv=usm_conv)
        self.deg = NaiveDegrader(self.settings, device=device, profile=self.inline)
        self.preset = preset
        self.acc = {}
        self.times = []

    def warm(self):
        # the CPU baseline needs no full-size warm-up (it would cost a slow extra call)
        self.deg.reseed(0)
        self.deg(self.hr[:4] if self.inline else self.hr)
        _sync(self.device)

    def call(self, r):
        self.deg.reseed(r)
        torch.manual_seed(r)
        self.deg(self.hr)
        if self.inline:
            _add_stages(self.acc, self.deg.last_stage_times)

    def stages(self):
        if self.inline:
            return {"pairs": self.b * len(self.times), "seconds": self.acc}
        pdeg = NaiveDegrader(self.settings, device=self.device, profile=True)
        acc, n = {}, 0
        for r in range(1, min(self.args.profile_calls, len(self.times)) + 1):
            pdeg.reseed(r)
            torch.manual_seed(r)
            pdeg(self.hr)
            _add_stages(acc, pdeg.last_stage_times)
            n += 1
        return {"pairs": n * self.b, "seconds": acc}


def _rse(times) -> float:
    """Relative standard error of the mean call time (inf with fewer than two calls)."""
    if len(times) < 2:
        return float("inf")
    mean = sum(times) / len(times)
    var = sum((t - mean) ** 2 for t in times) / (len(times) - 1)
    return math.sqrt(var / len(times)) / mean


def run_interleaved(contenders: dict, device, args) -> dict:
    """Warm every contender, then time them in rounds (rotating the order each round), so that
    changing machine load hits all of them alike. Round r uses seed r for everybody. Rounds go
    on until ``--repeats`` rounds and ``--min-pairs`` pairs are done and every contender's mean
    call time has a relative standard error of at most ``--target-rse``, or until the time
    budget (``--max-seconds`` per contender) is spent; at least one round.

    The error target matters for the naive baseline: its per-batch choices make one call of
    osediff at batch 16 take 0.3 s or 6 s (coefficient of variation ~0.9), so a handful of
    calls can misstate its mean by a factor of two."""
    names = list(contenders)
    for c in contenders.values():
        c.warm()
    b = next(iter(contenders.values())).b
    t_start = time.perf_counter()
    r = 0
    while True:
        r += 1
        k = r % len(names)
        for name in names[k:] + names[:k]:
            c = contenders[name]
            _sync(device)
            t0 = time.perf_counter()
            c.call(r)
            _sync(device)
            c.times.append(time.perf_counter() - t0)
        precise = all(_rse(c.times) <= args.target_rse for c in contenders.values())
        done = r >= args.repeats and r * b >= args.min_pairs and precise
        if done or time.perf_counter() - t_start >= args.max_seconds * len(names):
            break
    out = {}
    for name, c in contenders.items():
        rate = c.b * len(c.times) / sum(c.times)
        rse = _rse(c.times)
        ci = [rate / (1 + 1.96 * rse), rate / max(1 - 1.96 * rse, 1e-9)] if math.isfinite(rse) else None
        out[name] = ({"pairs_per_s": rate, "calls": len(c.times), "rse": rse, "ci95": ci,
                      "seconds_per_call": c.times}, c.stages())
    return out


# --------------------------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------------------------
def _table(header, rows) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(header))]
    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w[i]) if i >= 1 else c.ljust(w[i]) for i, c in enumerate(r))

    return "\n".join([line(cells[0]), "  ".join("-" * x for x in w)] + [line(r) for r in cells[1:]])


def _ratio_ci(pf: dict, nv: dict):
    """95% interval of pairforge/naive throughput (log-normal, from both call-time spreads)."""
    if not pf or not nv or not math.isfinite(pf.get("rse", math.inf)) or not math.isfinite(nv.get("rse", math.inf)):
        return None
    ratio = pf["pairs_per_s"] / nv["pairs_per_s"]
    spread = 1.96 * math.hypot(pf["rse"], nv["rse"])
    return [ratio * math.exp(-spread), ratio * math.exp(spread)]


def _fmt_rate_ci(m) -> str:
    if not m:
        return "-"
    return f"{_fmt_rate(m['pairs_per_s'])} ({m['calls']})"


def _fmt_rate(x):
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def stage_table(title, entries, order=(), unit="ms per pair") -> str:
    """entries: list of (column label, {"pairs": n, "seconds": {stage: s}})."""
    entries = [(c, e) for c, e in entries if e and e.get("seconds")]
    if not entries:
        return f"{title}: no per-stage data"
    stages = [s for s in order if any(s in e["seconds"] for _, e in entries)]
    stages += sorted({s for _, e in entries for s in e["seconds"]} - set(stages))
    rows = []
    for s in stages + ["TOTAL"]:
        row = [s]
        for _, e in entries:
            tot = sum(e["seconds"].values())
            v = tot if s == "TOTAL" else e["seconds"].get(s)
            row.append("-" if v is None else f"{1e3 * v / e['pairs']:.3f} ({100 * v / tot:4.1f}%)")
        rows.append(row)
    return f"{title}  [{unit} (share)]\n" + _table(["stage"] + [c for c, _ in entries], rows)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="realesrgan-x4plus,osediff")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--hr-size", default=None,
                    help="comma list of HR sides for every preset (default: 400,256 for "
                         "realesrgan-x4plus, 512 for osediff)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--repeats", type=int, default=3, help="max timed calls per configuration")
    ap.add_argument("--min-pairs", type=int, default=16,
                    help="keep timing rounds until this many pairs per contender (budget allowing)")
    ap.add_argument("--max-seconds", type=float, default=60.0,
                    help="timing budget per contender and configuration (>= 1 call each)")
    ap.add_argument("--target-rse", type=float, default=0.1,
                    help="keep timing rounds until every contender's mean call time has at most "
                         "this relative standard error (budget allowing)")
    ap.add_argument("--profile-calls", type=int, default=2,
                    help="calls of the per-stage profiling pass (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--naive-usm-conv", default="both", choices=["batch", "grouped", "both"],
                    help="naive USM conv form: 'batch' is BasicSR's filter2D as written (the "
                         "(B*C,1,H,W) input against one 51x51 kernel; the baseline of the targets); "
                         "'grouped' is a B*C-group depthwise conv, a faster form on CPU that the "
                         "reference does not use; 'both' (default) times both for USM presets")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--no-pairforge", action="store_true")
    ap.add_argument("--json", default=None, metavar="OUT")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch.cuda.is_available() is False")
    device = torch.device(args.device)
    presets = [p for p in args.presets.split(",") if p]
    batches = [int(b) for b in args.batches.split(",") if b]
    backends = [b for b in args.backends.split(",") if b]

    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": args.device, "threads": args.threads, "cpu_count": os.cpu_count(),
           "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}
    if not args.no_pairforge:
        from pairforge.degradations import load_preset
        env["pairforge"] = engine_info()
    print("# pairforge degradation benchmark")
    print("  " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if env.get("pairforge", {}).get("stub"):
        print("  WARNING: degradations/ is still the temporary stub; pairforge numbers are not real")
    la = env["loadavg_start"]
    if args.device == "cpu" and la and la[0] > 0.5 * (os.cpu_count() or 1):
        print(f"  WARNING: load average {la[0]:.1f} on {os.cpu_count()} cores; other processes "
              f"compete for the CPU and CPU timings are noisy")
    sys.stdout.flush()

    rows, pf_stages, nv_stages, results = [], [], [], []
    t_all = time.perf_counter()
    for preset in presets:
        hr_sizes = ([int(s) for s in args.hr_size.split(",")] if args.hr_size
                    else DEFAULT_HR.get(preset, [256]))
        cfgs = {}
        if not args.no_pairforge:
            base = load_preset(preset)
            for be in backends:
                c = with_jpeg_backend(base, be)
                if c is None:
                    print(f"  note: {preset} config has no JPEG-backend field; measuring the "
                          f"preset as loaded (backend 'default')")
                    cfgs = {"default": base}
                    break
                cfgs[be] = c
        for hr_size in hr_sizes:
            pf_by_batch = {be: [] for be in cfgs}
            nv_by_batch = []
            for b in batches:
                hr = make_hr(b, hr_size, seed=b).to(device)
                contenders = {}
                if not args.no_naive:
                    primary = "grouped" if args.naive_usm_conv == "grouped" else "batch"
                    contenders["naive"] = NaiveContender(preset, hr, device, args, primary)
                    if args.naive_usm_conv == "both" and settings_for(preset).use_usm:
                        contenders["naive-grouped"] = NaiveContender(preset, hr, device, args, "grouped")
                for be, cfg in cfgs.items():
                    contenders[be] = PairforgeContender(cfg, hr, device, args)
                if not contenders:
                    continue
                t0 = time.perf_counter()
                res = run_interleaved(contenders, device, args)
                naive, nst = res.get("naive", (None, None))
                naive_grouped, _ = res.get("naive-grouped", (None, None))
                if nst is not None:
                    nv_by_batch.append((f"B={b}", nst))
                line = f"  {preset} HR {hr_size} B={b}: " + ", ".join(
                    f"{name} {m['pairs_per_s']:.2f} pairs/s ({m['calls']} calls)"
                    for name, (m, _) in res.items())
                print(f"{line}  [{time.perf_counter() - t0:.0f}s]", flush=True)
                for be in cfgs:
                    pf, pst = res[be]
                    pf_by_batch[be].append((f"B={b}", pst))
                    results.append({"preset": preset, "batch": b, "hr": hr_size,
                                    "device": args.device, "backend": be, "pairforge": pf,
                                    "naive": naive, "naive_grouped": naive_grouped,
                                    "pairforge_stages": pst,
                                    "naive_stages": nst})
                if not cfgs:
                    results.append({"preset": preset, "batch": b, "hr": hr_size,
                                    "device": args.device, "backend": "-", "pairforge": None,
                                    "naive": naive, "naive_grouped": naive_grouped,
                                    "pairforge_stages": None,
                                    "naive_stages": nst})
                del hr, contenders
            for be, entries in pf_by_batch.items():
                unit = "ms per pair"
                if args.device == "cpu" and args.threads > 1:
                    unit = (f"thread-ms per pair: batches > 1 run one sample per thread on {args.threads} "
                            f"threads, so stages sum to about {args.threads}x the wall time")
                pf_stages.append(stage_table(f"pairforge {preset} HR {hr_size} {args.device} "
                                             f"jpeg={be}", entries, unit=unit))
            if nv_by_batch:
                nv_stages.append(stage_table(f"naive {preset} HR {hr_size} {args.device}",
                                             nv_by_batch, NAIVE_STAGES))

    # ---- main table
    header = ["preset", "batch", "HR", "device", "backend", "pairforge pairs/s (calls)",
              "naive pairs/s (calls)", "speed-up", "95% CI", "target", "met",
              "naive-grouped pairs/s", "speed-up vs grouped"]
    for r in results:
        pf = r["pairforge"]["pairs_per_s"] if r["pairforge"] else None
        nv = r["naive"]["pairs_per_s"] if r["naive"] else None
        ng = r["naive_grouped"]["pairs_per_s"] if r.get("naive_grouped") else None
        sp = pf / nv if pf and nv else None
        sg = pf / ng if pf and ng else None
        r["speedup"], r["speedup_vs_grouped"] = sp, sg
        r["speedup_ci95"] = _ratio_ci(r["pairforge"], r["naive"]) if sp else None
        tgt, met = "-", "-"
        st = SPEEDUP_TARGETS.get((r["device"], r["preset"]))
        rt = RATE_TARGETS.get((r["device"], r["preset"], r["hr"], r["backend"]))
        if st is not None and sp is not None:
            tgt, met = f">={st:g}x", "yes" if sp >= st else "NO"
        elif rt is not None and pf is not None:
            tgt, met = f">={rt:,.0f}/s", "yes" if pf >= rt else "NO"
        r["target"], r["met"] = tgt, met
        ci = r["speedup_ci95"]
        rows.append([r["preset"], r["batch"], r["hr"], r["device"], r["backend"],
                     _fmt_rate_ci(r["pairforge"]), _fmt_rate_ci(r["naive"]),
                     "-" if sp is None else f"{sp:.1f}x", "-" if not ci else f"{ci[0]:.1f}-{ci[1]:.1f}x",
                     tgt, met, _fmt_rate(ng), "-" if sg is None else f"{sg:.1f}x"])
    print()
    print("## Throughput (LR/HR pairs per second; higher is better)")
    print(_table(header, rows))
    print("naive = the reference chain as written (BasicSR filter2D USM); naive-grouped = the same "
          "with the USM as a grouped conv, a faster form the reference does not use (USM presets).")
    print("95% CI: from the spread of call times (the naive's per-batch choices make its calls vary "
          "up to 20x); 'met' compares the point estimate with the target.")
    print("Targets: CPU (2 cores) speed-up over naive >=10x realesrgan-x4plus, >=3x osediff; "
          "CUDA (H100) realesrgan-x4plus at 256^2 HR >=5,000 pairs/s with real JPEG, "
          ">=15,000 with differentiable.")
    if pf_stages:
        print("\n## pairforge per-stage time (Degrader(..., profile=True).last_stage_times)")
        for t in pf_stages:
            print(t + "\n")
    if nv_stages:
        print("## naive baseline per-stage time")
        for t in nv_stages:
            print(t + "\n")
    env["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    env["wall_seconds"] = time.perf_counter() - t_all
    print(f"total wall time {env['wall_seconds']:.0f}s; load average at end {env['loadavg_end']}")
    out = {"env": env, "args": vars(args), "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
