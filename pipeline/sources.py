"""Where HR images come from, listed deterministically and content-hashed.

A source spec is one string:

* ``bundled`` — the real photos shipped inside scikit-image (no download needed);
* a local folder, ``file://`` folder or ``s3://bucket/prefix`` — every image file below it;
* a text file (``.txt``/``.lst``/``.list``, local or S3) — one path/URL per line (``#`` comments),
  relative paths resolved against the list file's folder;
* a WebDataset — a ``.tar`` URL, a brace pattern (``shards-{000..009}.tar``), a folder of
  ``.tar`` files, or a pairforge dataset folder (its ``hr`` images are re-used).

Why content hashes: the dataset id (and therefore reuse) must change when an image changes
and must *not* change when the same images move to another folder or bucket.  Local files are
hashed with sha256 (threaded), S3 objects use their ETag+size (S3 already computed it), tar
members are hashed while the tar is streamed once, and remote URLs we cannot cheaply read are
identified by their URL.  The listing is sorted by the item's name relative to the source root,
and item *i* gets the image key ``f"{i:08d}"`` — no dots, stable for a given listing.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Iterable

from . import storage

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")
LIST_EXTS = (".txt", ".lst", ".list")
#: real photos shipped with scikit-image (colour, at least 300 px on the short side)
BUNDLED = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
           "motorcycle_left.png", "rocket.jpg")


class SourceError(ValueError):
    """The source spec is unusable (missing, empty, unreadable); the message says why."""


@dataclass(frozen=True)
class SourceItem:
    """One HR input: where to read it and what its content is."""

    name: str            # stable relative name; the listing is sorted by it
    url: str             # absolute local path / s3:// / http(s):// to read from
    content: str         # content id: sha256 hex, "etag:<..>" or "url:<sha>"
    offset: int | None = None  # byte range inside ``url`` (tar members)
    size: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def from_dict(d: dict) -> "SourceItem":
        return SourceItem(**d)


@dataclass
class Listing:
    """A deterministic, hashed listing of a source."""

    spec: str                 # redacted source spec, for humans
    kind: str
    items: list[SourceItem]
    ignored: int = 0          # files below the root that are not images (by extension)

    def digest(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.name}\t{it.content}\n".encode())
        return h.hexdigest()

    def summary(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "inputs": len(self.items),
                "ignored_files": self.ignored, "listing_sha256": self.digest()}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_local(paths: list[str]) -> list[str]:
    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(_sha256_file, paths))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS) and not os.path.basename(name).startswith(".")


def _finish(spec: str, kind: str, items: Iterable[SourceItem], ignored: int = 0) -> Listing:
    items = sorted(items, key=lambda it: it.name)
    if not items:
        raise SourceError(f"source {storage.redact(spec)!r} contains no images")
    return Listing(storage.redact(spec), kind, items, ignored)


# ---------------------------------------------------------------- individual source kinds
def list_bundled(min_side: int = 0) -> Listing:
    """scikit-image's bundled photos whose short side is at least ``min_side``."""
    import skimage
    from PIL import Image

    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    paths = []
    for name in BUNDLED:
        p = os.path.join(root, name)
        if os.path.exists(p):
            with Image.open(p) as im:
                if min(im.size) >= min_side:
                    paths.append(p)
    hashes = _hash_local(paths)
    return _finish("bundled", "bundled",
                   (SourceItem(os.path.basename(p), p, h) for p, h in zip(paths, hashes)))


def list_local_folder(root: str) -> Listing:
    paths, ignored = [], 0
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in files:
            p = os.path.join(d, f)
            if _is_image_name(f) and os.path.isfile(p):
                paths.append(p)
            elif not f.startswith("."):
                ignored += 1
    hashes = _hash_local(paths)
    return _finish(root, "folder", (SourceItem(os.path.relpath(p, root).replace(os.sep, "/"), p, h)
                                    for p, h in zip(paths, hashes)), ignored)


def list_s3_prefix(url: str, storage_options: dict | None = None) -> Listing:
    fs, path = storage.get_fs(url, storage_options)
    fs.invalidate_cache()
    try:
        found = storage.retry(lambda: fs.find(path, detail=True), what=f"list {url}")
    except FileNotFoundError:
        raise SourceError(f"source {storage.redact(url)!r} does not exist") from None
    except PermissionError as exc:
        raise SourceError(f"cannot list {storage.redact(url)!r}: access denied ({exc})") from None
    items, ignored = [], 0
    for key, info in found.items():
        if info.get("type") == "directory":
            continue
        if not _is_image_name(key):
            ignored += 1
            continue
        etag = str(info.get("ETag", info.get("etag", ""))).strip('"')
        rel = key[len(path):].lstrip("/") if key.startswith(path) else key
        items.append(SourceItem(rel, "s3://" + key, f"etag:{etag}:{info.get('size')}"))
    return _finish(url, "s3", items, ignored)


def _content_of(url: str, storage_options: dict | None) -> str:
    if storage.is_s3(url):
        fs, path = storage.get_fs(url, storage_options)
        try:
            info = storage.retry(lambda: fs.info(path), what=f"stat {url}")
            return f"etag:{str(info.get('ETag', '')).strip(chr(34))}:{info.get('size')}"
        except FileNotFoundError:
            return "missing"
    if "://" in url:
        return "url:" + hashlib.sha256(url.encode()).hexdigest()
    try:
        return _sha256_file(url)
    except OSError:
        return "missing"


def list_text_file(url: str, storage_options: dict | None = None) -> Listing:
    try:
        text = storage.read_bytes(url, storage_options).decode("utf-8")
    except FileNotFoundError:
        raise SourceError(f"list file {storage.redact(url)!r} does not exist") from None
    except UnicodeDecodeError:
        raise SourceError(f"list file {storage.redact(url)!r} is not UTF-8 text") from None
    base = storage.normalize(url).rsplit("/", 1)[0]
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "://" in line and not line.startswith(("file://", "s3://", "s3a://")):
            entries.append((line, line))                       # http(s) and other fsspec URLs
        elif "://" in line or os.path.isabs(line):
            entries.append((line, storage.normalize(line)))
        else:
            entries.append((line, storage.join(base, line)))  # relative to the list file
    if not entries:
        raise SourceError(f"list file {storage.redact(url)!r} lists nothing")
    with ThreadPoolExecutor(8) as ex:
        contents = list(ex.map(lambda e: _content_of(e[1], storage_options), entries))
    # the name keeps the list order meaningful only through sorting; duplicates keep one entry
    seen, items = set(), []
    for (name, u), c in zip(entries, contents):
        if name in seen:
            continue
        seen.add(name)
        items.append(SourceItem(storage.redact(name), u, c))
    return _finish(url, "list", items)


def _expand_shards(spec: str, storage_options: dict | None) -> list[str]:
    import braceexpand

    spec = storage.normalize(spec) if not ("{" in spec) else spec
    if "{" in spec:
        return [storage.normalize(u) for u in braceexpand.braceexpand(spec)]
    if spec.endswith(".tar"):
        return [spec]
    manifest_url = storage.join(spec, "manifest.json")
    if storage.exists(manifest_url, storage_options):
        man = json.loads(storage.read_bytes(manifest_url, storage_options))
        return [storage.join(spec, s["name"]) for s in man["shards"]]
    return [storage.join(spec, n) for n in storage.listdir(spec, storage_options) if n.endswith(".tar")]


def list_webdataset(spec: str, storage_options: dict | None = None) -> Listing:
    """One item per sample holding an image; prefers the ``hr.*`` field of pairforge shards."""
    items = []
    for url in _expand_shards(spec, storage_options):
        fs, path = storage.get_fs(url, storage_options)
        try:
            f = storage.retry(lambda: fs.open(path, "rb"), what=f"open {url}")
        except FileNotFoundError:
            raise SourceError(f"shard {storage.redact(url)!r} does not exist") from None
        chosen: dict[str, tuple[int, str, int, int, str]] = {}
        try:
            with f, tarfile.open(fileobj=f, mode="r|") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    base = m.name.rsplit("/", 1)[-1]
                    if "." not in base:
                        continue
                    key, ext = base.split(".", 1)
                    key = m.name[: len(m.name) - len(base)] + key
                    ext = ext.lower()
                    if not ext.endswith(tuple(e.lstrip(".") for e in IMAGE_EXTS)):
                        continue
                    rank = 0 if ext.startswith("hr.") else (2 if ext.startswith("lr") else 1)
                    data = tf.extractfile(m).read()
                    cand = (rank, ext, m.offset_data, m.size, hashlib.sha256(data).hexdigest())
                    if key not in chosen or cand < chosen[key]:
                        chosen[key] = cand
        except tarfile.TarError as exc:
            raise SourceError(f"shard {storage.redact(url)!r} is not a readable tar: {exc}") from None
        shard_name = storage.basename(url)
        for key, (_, ext, off, size, sha) in chosen.items():
            items.append(SourceItem(f"{shard_name}/{key}.{ext}", url, sha, off, size))
    return _finish(spec, "webdataset", items)


# ---------------------------------------------------------------- dispatch
def list_source(spec: str, storage_options: dict | None = None, *, min_side: int = 0) -> Listing:
    """Resolve a source spec to a :class:`Listing`; raises :class:`SourceError` with a reason."""
    spec = str(spec).strip()
    if not spec:
        raise SourceError("empty source spec")
    if spec == "bundled":
        return list_bundled(min_side)
    low = spec.lower()
    if spec.startswith("wds:"):
        return list_webdataset(spec[4:], storage_options)
    if ("{" in spec and ".." in spec) or low.endswith(".tar"):
        return list_webdataset(spec, storage_options)
    if low.endswith(LIST_EXTS):
        return list_text_file(spec, storage_options)
    url = storage.normalize(spec)
    if storage.is_s3(url):
        if storage.exists(storage.join(url, "manifest.json"), storage_options):
            return list_webdataset(url, storage_options)
        return list_s3_prefix(url, storage_options)
    if "://" in url:
        raise SourceError(f"unsupported source URL scheme in {storage.redact(spec)!r} "
                          "(use a folder, file://, s3://, a .txt list, a .tar/brace pattern or 'bundled')")
    if not os.path.exists(url):
        raise SourceError(f"source {spec!r} does not exist")
    if os.path.isfile(url):
        if _is_image_name(url):
            return _finish(spec, "file", [SourceItem(os.path.basename(url), url, _sha256_file(url))])
        raise SourceError(f"source file {spec!r} is neither an image, a .txt/.lst list nor a .tar shard")
    if os.path.exists(os.path.join(url, "manifest.json")):
        return list_webdataset(url, storage_options)
    names = os.listdir(url)
    if names and all(n.endswith(".tar") or n.startswith(".") for n in names) and any(n.endswith(".tar") for n in names):
        return list_webdataset(url, storage_options)
    return list_local_folder(url)


def image_key(index: int) -> str:
    """Key of the ``index``-th listed image (samples append ``_<patch>``)."""
    return f"{index:08d}"
