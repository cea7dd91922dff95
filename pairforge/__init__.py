"""pairforge: Real-ESRGAN-style LR/HR pair synthesis at cluster scale, and a D3SR trainer.

The repository keeps its four packages as top-level folders (``degradations/``, ``pipeline/``,
``training/``, ``clusters/``); the build maps them under this one name
(``pairforge.degradations`` …) so that a user's own ``training/`` or ``pipeline/`` package can
never shadow ours, nor ours theirs.  See ``[tool.setuptools]`` in pyproject.toml.
"""
