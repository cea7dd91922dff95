"""The one config layer every pairforge package uses: typed loading, overrides, presets.

Why one layer: a degradation preset and a training config are both YAML read by the same
users, so a scalar must mean the same thing in both (``5e-5`` — which PyYAML reads as a
*string* — is a number wherever a number is expected; ``3.0`` is accepted where an integer is
expected, ``3.5`` is not), an error must look the same (it starts with the dotted field path
and says what is allowed), a preset inherits from another the same way (``base: NAME``), and
a config's identity is computed the same way (:func:`fingerprint`).

The packages keep their own dataclasses (what the fields are); this module only knows how to
turn plain data into them and back.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

import yaml

from pairforge.errors import UsageError

T = TypeVar("T")

#: the key a YAML file uses to start from another preset (the only inheritance key)
BASE_KEY = "base"

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(UsageError, ValueError):
    """A config value is missing, unknown, of the wrong type or out of range.

    The message always starts with the dotted field path, e.g. ``first.noise.sigma_range:``.
    """


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------- plain → typed
def from_plain(tp: Any, data: Any, path: str = "") -> Any:
    """Convert plain data (YAML/JSON) to the annotated type ``tp``; errors name the path.

    Dataclasses become instances (unknown fields rejected), ``tuple[...]``/``list[...]``
    check their items, ``Literal`` checks membership, ``Optional``/unions try each arm.
    """
    where = path or "<root>"
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _dataclass_from_plain(tp, data, path)
    if origin is Literal:
        allowed = list(typing.get_args(tp))
        if data not in allowed:
            raise ConfigError(f"{where}: {data!r} is not allowed; choose one of {allowed}")
        return data
    if origin in (typing.Union, types.UnionType):
        return _union_from_plain(tp, data, path)
    if origin is tuple:
        return _tuple_from_plain(typing.get_args(tp), data, where)
    if origin in (list, collections.abc.Sequence):
        if not isinstance(data, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {data!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [from_plain(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {data!r}")
        kt, vt = typing.get_args(tp) or (str, Any)
        return {from_plain(kt, k, where): from_plain(vt, v, f"{where}.{k}") for k, v in data.items()}
    return _scalar_from_plain(tp, data, where)


def _dataclass_from_plain(tp: Any, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(tp)
    names = [f.name for f in dataclasses.fields(tp)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{join_path(path, str(unknown[0]))}: unknown field; known fields: {sorted(names)}")
    kwargs = {k: from_plain(hints[k], v, join_path(path, k)) for k, v in data.items()}
    try:
        return tp(**kwargs)
    except TypeError as exc:  # a required field without a default
        raise ConfigError(f"{path or '<root>'}: {exc}") from None


def _union_from_plain(tp: Any, data: Any, path: str) -> Any:
    args = typing.get_args(tp)
    if data is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return from_plain(arg, data, path)
        except ConfigError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise ConfigError(f"{path or '<root>'}: {data!r} does not match {tp}")


def _tuple_from_plain(args: tuple, data: Any, where: str) -> tuple:
    if not isinstance(data, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {data!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(from_plain(args[0], v, f"{where}[{i}]") for i, v in enumerate(data))
    if len(data) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} values, got {list(data)}")
    return tuple(from_plain(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))


def _scalar_from_plain(tp: Any, data: Any, where: str) -> Any:
    """The scalar rules, identical for every package (see the module docstring)."""
    if tp is Any:
        return data
    if tp is bool:
        if not isinstance(data, bool):
            raise ConfigError(f"{where}: expected true or false, got {data!r}")
        return data
    if tp is float:
        if isinstance(data, str) and _NUMBER.match(data.strip()):
            return float(data)  # PyYAML (YAML 1.1) reads 5e-5 as a string
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {data!r}")
        return float(data)
    if tp is int:
        if isinstance(data, float) and data.is_integer():
            return int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            raise ConfigError(f"{where}: expected an integer, got {data!r}")
        return data
    if tp is str:
        if not isinstance(data, str):
            raise ConfigError(f"{where}: expected a string, got {data!r}")
        return data
    raise ConfigError(f"{where}: unsupported type {tp}")


# --------------------------------------------------------------------------- typed → plain
def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and mappings as JSON-able dicts and lists (inverse of from_plain)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_plain(v) for v in value]
    return value


def fingerprint(config: Any) -> str:
    """sha256 (hex) of a config's canonical JSON: equal configs, equal fingerprints.

    Dataset ids embed the degradation config's fingerprint, so this definition is frozen.
    """
    return hashlib.sha256(json.dumps(to_plain(config), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- merging, overrides
def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], *,
               atomic: collections.abc.Container[str] = ()) -> dict[str, Any]:
    """``update`` over ``base``, recursing into mappings except keys named in ``atomic``
    (a mapping that is one value, e.g. a probability table, is replaced whole)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and k not in atomic:
            out[k] = deep_merge(out[k], v, atomic=atomic)
        else:
            out[k] = v
    return out


def set_dotted(data: dict, dotted: str, value: Any) -> dict:
    """``set_dotted(d, "engine.zero_stage", 2)`` → ``d["engine"]["zero_stage"] = 2``; returns d."""
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return data


def apply_dotted(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of plain ``data`` with ``{"a.b.c": value}`` overrides; each path must exist."""
    out = json.loads(json.dumps(to_plain(data)))
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{dotted}: no such field")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{dotted}: no such field")
        node[parts[-1]] = to_plain(value)
    return out


# --------------------------------------------------------------------------- presets
class Presets:
    """A folder of YAML presets; a file may start from another one with ``base: NAME``.

    ``kind`` names the presets in messages ("degradation preset", "training preset").
    """

    def __init__(self, folder: Path, kind: str, *, atomic: collections.abc.Container[str] = ()):
        self.folder = Path(folder)
        self.kind = kind
        self.atomic = atomic

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.yaml"))

    def resolve(self, name_or_path: str | Path) -> Path:
        """A bundled preset's file by name, or an existing YAML file by path."""
        text = str(name_or_path)
        if text in self.names():
            return self.folder / f"{text}.yaml"
        path = Path(text).expanduser()
        if path.suffix in (".yaml", ".yml") and path.is_file():
            return path
        raise ConfigError(f"{BASE_KEY}: {text!r} is neither a bundled {self.kind} "
                          f"({', '.join(self.names())}) nor an existing YAML file")

    def load(self, name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
        """The plain dict of a preset/file with its ``base:`` chain merged in (base key removed)."""
        path = self.resolve(name_or_path)
        if path.resolve() in _seen:
            raise ConfigError(f"{BASE_KEY}: {path} inherits from itself ({' → '.join(map(str, _seen))})")
        return self.expand(read_yaml(path), _seen + (path.resolve(),))

    def expand(self, data: Mapping[str, Any], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
        """``data`` merged over the preset its ``base:`` names (if any)."""
        data = dict(data)
        if "preset" in data:  # the training configs' old inheritance key
            raise ConfigError(f"preset: the inheritance key is `{BASE_KEY}:` (write `{BASE_KEY}: {data['preset']}`)")
        base = data.pop(BASE_KEY, None)
        if base is None:
            return data
        if not isinstance(base, str):
            raise ConfigError(f"{BASE_KEY}: expected a preset name or YAML path, got {base!r}")
        return deep_merge(self.load(base, _seen), data, atomic=self.atomic)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file that must hold a mapping; syntax errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{BASE_KEY}: {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"<root>: {path}: the YAML document must be a mapping")
    return data


__all__ = ["ConfigError", "BASE_KEY", "from_plain", "to_plain", "fingerprint", "deep_merge", "set_dotted",
           "apply_dotted", "Presets", "read_yaml", "join_path"]
