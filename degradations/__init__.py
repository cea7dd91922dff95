"""Real-ESRGAN's second-order degradation chain as a batched, per-sample, replayable torch library.

    from pairforge.degradations import Degrader, load_preset, replay
    cfg = load_preset("realesrgan-x4plus")
    deg = Degrader(cfg, device="cpu")
    lr, records = deg(hr, keys=keys, seed=7)     # hr uint8 (B,3,H,W) → lr uint8 (B,3,H/s,W/s)
    assert torch.equal(replay(hr[:1], records[0]), lr[:1])

No Ray, no S3, no files: torch, kornia and numpy (Pillow for the libjpeg codec). Nothing here
changes the host process on import or construction; the CPU allocator policy that makes the
chain faster (:func:`retain_freed_memory`) is opt-in, applied by pairforge's own entry points.
"""
#: Recorded in every parameter record and in the pipeline's job identity: bumped whenever the
#: same record would give different pixels (0.2.0: CPU blur at each kernel's numerical
#: extent, differentiable JPEG per sample), so content-addressed shards never mix engines.
__version__ = "0.2.0"

from .chain import StageTimer, apply_chain
from .config import ConfigError, DegradationConfig, available_presets, load_preset
from .degrader import Degrader, replay
from .describe import describe_record
from .filters import usm_sharpen
from .kernels import build_kernels
from .memory import retain_freed_memory
from .sampling import RECORD_FORMAT, draw_record

__all__ = [
    "ConfigError",
    "DegradationConfig",
    "Degrader",
    "RECORD_FORMAT",
    "StageTimer",
    "__version__",
    "apply_chain",
    "available_presets",
    "build_kernels",
    "describe_record",
    "draw_record",
    "load_preset",
    "replay",
    "retain_freed_memory",
    "usm_sharpen",
]
