"""One-line human summaries of parameter records, for captions and logs."""
from __future__ import annotations

import math
from typing import Any


def _blur(b: dict[str, Any] | None) -> str:
    if b is None:
        return "no blur"
    if b["family"] == "sinc":
        return f"sinc{b['size']} ω={b['omega'] / math.pi:.2f}π"
    s = f"{b['family']}{b['size']} σ={b['sigma_x']:.2f}"
    if b["sigma_y"] != b["sigma_x"]:
        s += f"/{b['sigma_y']:.2f} θ={math.degrees(b['theta']):.0f}°"
    if "beta" in b:
        s += f" β={b['beta']:.2f}"
    return s


def _resize(r: dict[str, Any] | None) -> str:
    if r is None:
        return ""
    return f"{r['direction']} ×{r['factor']:.2f} {r['mode']}"


def _noise(n: dict[str, Any] | None) -> str:
    if n is None:
        return ""
    gray = " gray" if n["gray"] else ""
    if n["type"] == "gaussian":
        return f"gauss σ={n['sigma']:.1f}{gray}"
    return f"poisson {n['scale']:.2f}{gray}"


def describe_record(record: dict[str, Any], lines: int = 3) -> str:
    """Summarize a record: first order, second order and final step, one per line."""
    f, s, fin = record["first"], record["second"], record["final"]
    first = f"1: {_blur(f['blur'])}, {_resize(f['resize'])}, {_noise(f['noise'])}, jpeg q{f['jpeg']['quality']}"
    if record.get("usm"):
        first = "usm, " + first
    second = (
        f"2: {_blur(s.get('blur'))}, {_resize(s.get('resize'))}, {_noise(s.get('noise'))}" if s["applied"] else "2: skipped"
    )
    order = "resize→sinc→jpeg" if fin["order"] == "resize_sinc_jpeg" else "jpeg→resize→sinc"
    final = f"final: {order} {fin['resize']['mode']}, {_blur(fin['sinc']) if fin['sinc'] else 'no sinc'}, q{fin['jpeg']['quality']}"
    parts = [first, second, final]
    return "\n".join(parts) if lines >= 3 else "; ".join(parts)
