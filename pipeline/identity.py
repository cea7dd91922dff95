"""A dataset's identity: the folder name that says which inputs made its bytes.

:func:`dataset_id` hashes everything that determines the bytes of the shards (source listing,
degradation config fingerprint, patching/encoding config, seed, views, shard layout, code
versions).  Same inputs → same folder → reuse; any change → a new folder, so another config can
never overwrite an existing dataset.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    """Compact sorted JSON: the bytes that are hashed, independent of dict order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()


def config_hash(identity: dict) -> str:
    """Full sha256 of an identity dict (recorded in the manifest)."""
    return hashlib.sha256(canonical_json(identity)).hexdigest()


def dataset_id(identity: dict, name: str = "") -> str:
    """``<preset name>-<16 hex>``: readable, and unique per identity dict."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    digest = config_hash(identity)[:16]
    return f"{safe}-{digest}" if safe else digest
