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

Why skips are counted here: a single file never stops a job, and nothing is left out silently.
A file or folder that cannot be read (or a dangling symlink) is left out of the listing and
recorded in :attr:`Listing.skipped` with a reason; symlinks are followed, but each real folder is
entered once and each real file listed once, so a link loop cannot multiply the data.
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Hashable, Iterable

from pairforge.errors import UsageError

from . import storage

#: the one list of image file extensions every command reads (synth, upscale, eval, degrade)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm")
LIST_EXTS = (".txt", ".lst", ".list")
#: real photos shipped with scikit-image (colour, at least 300 px on the short side)
BUNDLED = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg",
           "motorcycle_left.png", "rocket.jpg")

# why a file or folder is left out of a listing (``Listing.skipped[*]["reason"]``)
UNREADABLE = "unreadable"                # a file that cannot be opened or read (permissions, I/O error)
UNREADABLE_FOLDER = "unreadable_folder"  # a folder that cannot be listed
DANGLING_SYMLINK = "dangling_symlink"    # a symlink to nothing (or to itself)
DUPLICATE = "duplicate"                  # a file already listed under another name (symlink, hard link)
DUPLICATE_FOLDER = "duplicate_folder"    # a folder already entered under another name (a link loop or alias)


class SourceError(UsageError, ValueError):
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


@dataclass
class Listing:
    """A deterministic, hashed listing of a source."""

    spec: str                 # redacted source spec, for humans
    kind: str
    items: list[SourceItem]
    ignored: int = 0          # files below the root that are not images (by extension)
    #: what was left out while listing, sorted by name: ``{"name", "reason", "detail"}`` each
    skipped: list[dict] = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        for it in self.items:
            h.update(f"{it.name}\t{it.content}\n".encode())
        return h.hexdigest()

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s["reason"] for s in self.skipped).items()))

    def summary(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "inputs": len(self.items),
                "ignored_files": self.ignored, "skipped": len(self.skipped),
                "skipped_by_reason": self.skipped_by_reason(), "listing_sha256": self.digest()}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_or_error(path: str) -> str | OSError:
    try:
        return _sha256_file(path)
    except OSError as exc:
        return exc


def _hash_local(paths: list[str]) -> list[str | OSError]:
    """sha256 of each file, or the error that stopped reading it (the caller skips that file)."""
    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(_sha256_or_error, paths))


def _error_detail(exc: OSError) -> str:
    """``"PermissionError: Permission denied"``: the kind of failure, without repeating the path."""
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def _skip(name: str, reason: str, detail: str | OSError) -> dict:
    return {"name": name, "reason": reason,
            "detail": _error_detail(detail) if isinstance(detail, OSError) else detail}


def _hash_items(named_paths: list[tuple[str, str]]) -> tuple[list[SourceItem], list[dict]]:
    """Content-hash local files; one that cannot be read is skipped with its reason, never raised."""
    contents = _hash_local([path for _, path in named_paths])
    items, skipped = [], []
    for (name, path), content in zip(named_paths, contents):
        if isinstance(content, OSError):
            skipped.append(_skip(name, UNREADABLE, content))
        else:
            items.append(SourceItem(name, path, content))
    return items, skipped


def is_image_name(name: str) -> bool:
    """Whether a file name is one every command reads as an image: one of :data:`IMAGE_EXTS`
    (any case), not hidden. The one list, for synth's sources, ``upscale`` and ``eval`` alike."""
    return name.lower().endswith(IMAGE_EXTS) and not os.path.basename(name).startswith(".")


def _finish(spec: str, kind: str, items: Iterable[SourceItem], ignored: int = 0,
            skipped: Iterable[dict] = ()) -> Listing:
    items = sorted(items, key=lambda it: it.name)
    skipped = sorted(skipped, key=lambda s: (s["name"], s["reason"]))
    if not items:
        raise SourceError(f"source {storage.redact(spec)!r} contains no images{_skipped_note(skipped)}")
    return Listing(storage.redact(spec), kind, items, ignored, skipped)


def _skipped_note(skipped: list[dict], show: int = 3) -> str:
    """The first few skips, for an error message: why a source that has files yields no images."""
    if not skipped:
        return ""
    shown = "; ".join(f"{s['name']}: {s['reason']} ({s['detail']})" for s in skipped[:show])
    more = f"; and {len(skipped) - show} more" if len(skipped) > show else ""
    return f" ({len(skipped)} skipped while listing: {shown}{more})"


# ---------------------------------------------------------------- individual source kinds
def bundled_photos() -> list[tuple[str, str]]:
    """``(name, path)`` of each :data:`BUNDLED` photo this scikit-image install ships, in order."""
    import skimage

    root = os.path.join(os.path.dirname(skimage.__file__), "data")
    return [(name, os.path.join(root, name)) for name in BUNDLED if os.path.exists(os.path.join(root, name))]


def list_bundled(min_side: int = 0) -> Listing:
    """scikit-image's bundled photos whose short side is at least ``min_side``."""
    from PIL import Image

    candidates, skipped = [], []
    for name, p in bundled_photos():
        try:
            with Image.open(p) as im:
                big_enough = min(im.size) >= min_side
        except OSError as exc:
            skipped.append(_skip(name, UNREADABLE, exc))
            continue
        if big_enough:
            candidates.append((name, p))
    items, unreadable = _hash_items(candidates)
    return _finish("bundled", "bundled", items, skipped=skipped + unreadable)


def list_local_folder(root: str) -> Listing:
    """Every image file below ``root``; symlinks are followed, each real file is listed once."""
    scan = _scan_folder(root)
    unique, duplicates = _one_name_per_file(scan.images)
    items, unreadable = _hash_items(unique)
    return _finish(root, "folder", items, scan.ignored, scan.skipped + duplicates + unreadable)


@dataclass
class _FolderScan:
    """What a walk below one root found so far."""

    images: list[tuple[bool, str, str, Hashable]] = field(default_factory=list)  # via_link, name, path, id
    ignored: int = 0
    skipped: list[dict] = field(default_factory=list)
    folders: dict[Hashable, str] = field(default_factory=dict)  # real folder -> the name it is listed under

    def enter(self, rel: str, ident: Hashable) -> bool:
        """Claim a real folder for ``rel``; False (and a ``duplicate_folder`` skip) if already taken."""
        if ident in self.folders:
            self.skipped.append(_skip(rel, DUPLICATE_FOLDER, f"same folder as {self.folders[ident]!r}"))
            return False
        self.folders[ident] = rel
        return True


def _identity(path: str, st: os.stat_result) -> Hashable:
    """One real file or folder, whatever name (link) reaches it: its (device, inode)."""
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)  # no inode numbers: real path


def _scan_folder(root: str) -> _FolderScan:
    """Walk below ``root`` following symlinks, entering each real folder once.

    The folders physically below ``root`` are walked first (depth first, sorted), then folders
    reached through links, in the sorted order they were found.  So a link never renames a file
    that is physically there (nor changes the listing digest), a link back to an ancestor (a loop)
    or to a folder already entered is a ``duplicate_folder``, and the result does not depend on the
    order the OS returns entries in.
    """
    scan = _FolderScan()
    try:
        scan.enter(".", _identity(root, os.stat(root)))
    except OSError as exc:
        scan.skipped.append(_skip(".", UNREADABLE_FOLDER, exc))
        return scan
    physical: list[tuple[str, bool]] = [("", False)]           # (folder, reached through a link)
    linked: deque[tuple[str, Hashable]] = deque()              # (link to a folder, its target's id)
    while physical or linked:
        if physical:
            rel_dir, via_link = physical.pop()
        else:
            rel_dir, ident = linked.popleft()
            via_link = True
            if not scan.enter(rel_dir, ident):
                continue
        subfolders, links = _scan_one_folder(root, rel_dir, via_link, scan)
        physical.extend((sub, via_link) for sub in reversed(subfolders))
        linked.extend(links)
    return scan


def _scan_one_folder(root: str, rel_dir: str, via_link: bool,
                     scan: _FolderScan) -> tuple[list[str], list[tuple[str, Hashable]]]:
    """Record one folder's files in ``scan``; return its new real subfolders and its folder links."""
    try:
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        scan.skipped.append(_skip(rel_dir or ".", UNREADABLE_FOLDER, exc))
        return [], []
    subfolders, links = [], []
    for entry in entries:
        rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        try:
            st = entry.stat()  # follows symlinks
        except OSError as exc:
            reason = _unstattable_reason(entry, exc)
            if reason:
                scan.skipped.append(_skip(rel, reason, exc))
            else:
                scan.ignored += 1
            continue
        ident = _identity(entry.path, st)
        if stat.S_ISDIR(st.st_mode):
            if entry.is_symlink():
                links.append((rel, ident))      # entered later: real folders keep their real names
            elif scan.enter(rel, ident):
                subfolders.append(rel)
        elif stat.S_ISREG(st.st_mode) and is_image_name(entry.name):
            scan.images.append((via_link or entry.is_symlink(), rel, entry.path, ident))
        else:
            scan.ignored += 1
    return subfolders, links


def _unstattable_reason(entry: os.DirEntry, exc: OSError) -> str | None:
    """Why an entry whose target cannot be examined is skipped; None: a plain non-image (ignored)."""
    try:
        is_link, is_dir = entry.is_symlink(), entry.is_dir(follow_symlinks=False)
    except OSError:
        is_link = is_dir = False
    if is_link and exc.errno in (errno.ENOENT, errno.ELOOP):
        return DANGLING_SYMLINK
    if is_dir:
        return UNREADABLE_FOLDER
    if is_link or is_image_name(entry.name):
        return UNREADABLE
    return None


def _one_name_per_file(images: list[tuple[bool, str, str, Hashable]]) -> tuple[list[tuple[str, str]], list[dict]]:
    """Keep each real file once: under a name reached without links if it has one, else under its
    lexicographically first name; the other names are ``duplicate`` skips."""
    first: dict[Hashable, str] = {}
    unique, duplicates = [], []
    for _, name, path, ident in sorted(images, key=lambda im: (im[0], im[1])):
        if ident in first:
            duplicates.append(_skip(name, DUPLICATE, f"same file as {first[ident]!r}"))
        else:
            first[ident] = name
            unique.append((name, path))
    return unique, duplicates


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
        if not is_image_name(key):
            ignored += 1
            continue
        etag = str(info.get("ETag", info.get("etag", ""))).strip('"')
        rel = key[len(path):].lstrip("/") if key.startswith(path) else key
        items.append(SourceItem(rel, "s3://" + key, f"etag:{etag}:{info.get('size')}"))
    return _finish(url, "s3", items, ignored)


def _content_of(url: str, storage_options: dict | None) -> str | OSError:
    """The content id of one listed URL; for a local file that exists but cannot be read, the error."""
    if storage.is_s3(url):
        fs, path = storage.get_fs(url, storage_options)
        try:
            info = storage.retry(lambda: fs.info(path), what=f"stat {url}")
            return f"etag:{str(info.get('ETag', '')).strip(chr(34))}:{info.get('size')}"
        except FileNotFoundError:
            return "missing"
    if "://" in url:
        return "url:" + hashlib.sha256(url.encode()).hexdigest()
    content = _sha256_or_error(url)
    return "missing" if isinstance(content, FileNotFoundError) else content  # the worker skips "missing"


def list_text_file(url: str, storage_options: dict | None = None) -> Listing:
    try:
        text = storage.read_bytes(url, storage_options).decode("utf-8")
    except FileNotFoundError:
        raise SourceError(f"list file {storage.redact(url)!r} does not exist") from None
    except UnicodeDecodeError:
        raise SourceError(f"list file {storage.redact(url)!r} is not UTF-8 text") from None
    except PermissionError as exc:
        raise SourceError(f"list file {storage.redact(url)!r} is unreadable: {_error_detail(exc)}") from None
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
    seen, items, skipped = set(), [], []
    for (name, u), c in zip(entries, contents):
        if name in seen:
            continue
        seen.add(name)
        if isinstance(c, OSError):
            skipped.append(_skip(storage.redact(name), UNREADABLE, c))
        else:
            items.append(SourceItem(storage.redact(name), u, c))
    return _finish(url, "list", items, skipped=skipped)


def _shard_sources(spec: str, storage_options: dict | None) -> list:
    """The shards of a webdataset source, resolved by the shard contract's one resolver
    (:func:`shards.shard_sources`: a pairforge dataset's come with their recorded size and sha256);
    a folder of tars with no manifest is the one case it does not cover: its tars, unverified."""
    from .shards import ShardSource, shard_sources

    spec = spec if "{" in spec else storage.normalize(spec)
    if "{" in spec or spec.endswith(".tar") or storage.exists(storage.join(spec, "manifest.json"), storage_options):
        return shard_sources(spec, storage_options=storage_options)
    return [ShardSource(storage.join(spec, n)) for n in storage.listdir(spec, storage_options) if n.endswith(".tar")]


def list_webdataset(spec: str, storage_options: dict | None = None) -> Listing:
    """One item per sample holding an image; prefers the ``hr.*`` field of pairforge shards.

    Every shard is read once, through :func:`shards.verified_stream`: a pairforge dataset's shard
    that is missing, truncated or altered stops the listing with a :class:`SourceError` naming it,
    instead of silently giving fewer images.
    """
    from .shards import ShardIntegrityError, verified_stream

    items = []
    for source in _shard_sources(spec, storage_options):
        url = source.url
        chosen: dict[str, tuple[int, str, int, int, str]] = {}
        try:
            with verified_stream(source, storage_options) as f, tarfile.open(fileobj=f, mode="r|") as tf:
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
        except ShardIntegrityError as exc:
            raise SourceError(f"source {exc}; fix or replace it (pairforge inspect --verify checks a whole "
                              "dataset) before synthesizing from it") from None
        except FileNotFoundError:
            raise SourceError(f"shard {storage.redact(url)!r} does not exist") from None
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
        if is_image_name(url):
            items, unreadable = _hash_items([(os.path.basename(url), url)])
            return _finish(spec, "file", items, skipped=unreadable)
        raise SourceError(f"source file {spec!r} is neither an image, a .txt/.lst list nor a .tar shard")
    if os.path.exists(os.path.join(url, "manifest.json")):
        return list_webdataset(url, storage_options)
    try:
        names = os.listdir(url)
    except OSError as exc:
        raise SourceError(f"cannot read source folder {spec!r}: {_error_detail(exc)}") from None
    if names and all(n.endswith(".tar") or n.startswith(".") for n in names) and any(n.endswith(".tar") for n in names):
        return list_webdataset(url, storage_options)
    return list_local_folder(url)


def image_key(index: int) -> str:
    """Key of the ``index``-th listed image (samples append ``_<patch>``)."""
    return f"{index:08d}"
