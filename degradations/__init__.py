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

from pairforge.lazy import lazy_exports

#: public name → the module that defines it, imported on first use (PEP 562): reading a preset
#: (``pairforge presets``, a synth dry run) then does not import torch (~2 s per command)
_EXPORTS = {
    "StageTimer": "chain", "apply_chain": "chain",
    "ConfigError": "config", "DegradationConfig": "config", "available_presets": "config", "load_preset": "config",
    "Degrader": "degrader", "replay": "degrader",
    "describe_record": "describe", "usm_sharpen": "filters", "build_kernels": "kernels",
    "retain_freed_memory": "memory", "RECORD_FORMAT": "sampling", "draw_record": "sampling",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
