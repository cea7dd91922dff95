"""Source faults on real files: symlink loops and aliases, dangling links, unreadable files and folders.

Unreadable means unreadable for the job's process: as root, ``chmod 000`` stops nobody, so the
job runs in a subprocess without the capabilities that let root read anything
(``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``), dropped with ``setpriv`` or ``capsh``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from pairforge.pipeline import SynthConfig, synth
from pairforge.pipeline.sources import list_local_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INLINE = SynthConfig.from_dict({"dataset": {"images_per_shard": 4, "patch": {"size": 64, "per_image": 2}},
                                "run": {"executor": "inline", "progress": False}})


def _photo(path, seed: int) -> None:
    """A distinct 96 x 96 crop of a real photo (distinct contents: duplicates come from links only)."""
    rng = np.random.default_rng(seed)
    img = data.astronaut()
    y, x = (int(v) for v in rng.integers(0, 400, 2))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(img[y:y + 96, x:x + 96])).save(path)


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ------------------------------------------------------------------ symlinks
def test_symlink_loop_gives_each_image_once(tmp_path):
    """The issue's case: ``loop/self -> ../loop`` turned one image into 41 inputs and 164 pairs."""
    src = tmp_path / "src"
    _photo(src / "loop" / "img.png", 0)
    os.symlink("../loop", src / "loop" / "self")

    listing = list_local_folder(str(src))
    assert [it.name for it in listing.items] == ["loop/img.png"]
    assert listing.skipped == [{"name": "loop/self", "reason": "duplicate_folder", "detail": "same folder as 'loop'"}]

    res = synth(str(src), str(tmp_path / "out"), INLINE)
    assert res.ok
    assert res.manifest["totals"]["inputs"] == 1 and res.manifest["totals"]["samples"] == 2
    assert res.manifest["source"]["skipped_by_reason"] == {"duplicate_folder": 1}


def test_links_to_listed_files_and_folders_list_each_real_file_once(tmp_path):
    src = tmp_path / "src"
    _photo(src / "photos" / "a.png", 1)
    _photo(src / "photos" / "b.png", 2)
    os.link(src / "photos" / "a.png", src / "photos" / "hard.png")      # hard link: same real file
    plain = list_local_folder(str(src))
    assert [it.name for it in plain.items] == ["photos/a.png", "photos/b.png"]

    # links into the tree add nothing and rename nothing, even where they sort first
    os.symlink("a.png", src / "photos" / "same_as_a.png")
    os.symlink("photos/b.png", src / "a_first.png")
    os.symlink("photos", src / "_all")
    os.symlink("photos", src / "zz_mirror")
    os.symlink("nowhere.png", src / "broken.png")                         # dangling
    os.symlink("self.png", src / "self.png")                              # points at itself
    linked = list_local_folder(str(src))
    assert [it.name for it in linked.items] == ["photos/a.png", "photos/b.png"]
    assert linked.digest() == plain.digest()

    # a link to a folder outside the source is followed, once
    _photo(tmp_path / "outside" / "e.png", 3)
    os.symlink("../outside", src / "ext")
    os.symlink("../outside", src / "ext_again")
    listing = list_local_folder(str(src))
    assert [it.name for it in listing.items] == ["ext/e.png", "photos/a.png", "photos/b.png"]
    assert [it.content for it in listing.items] == [_sha256(tmp_path / "outside" / "e.png"),
                                                    _sha256(src / "photos" / "a.png"),
                                                    _sha256(src / "photos" / "b.png")]
    assert [(s["name"], s["reason"]) for s in listing.skipped] == [
        ("_all", "duplicate_folder"),
        ("a_first.png", "duplicate"),
        ("broken.png", "dangling_symlink"),
        ("ext_again", "duplicate_folder"),
        ("photos/hard.png", "duplicate"),
        ("photos/same_as_a.png", "duplicate"),
        ("self.png", "dangling_symlink"),
        ("zz_mirror", "duplicate_folder"),
    ]
    summary = listing.summary()
    assert summary["inputs"] == 3 and summary["skipped"] == 8
    assert summary["skipped_by_reason"] == {"dangling_symlink": 2, "duplicate": 3, "duplicate_folder": 3}


def test_plain_folder_digest_keeps_its_format(photo_dir):
    """Dataset ids hash the listing digest: for a folder without links it must stay sha256 over
    sorted ``name<TAB>sha256<LF>`` lines, as before symlink handling existed."""
    files = sorted(os.path.relpath(os.path.join(d, f), photo_dir).replace(os.sep, "/")
                   for d, _, fs in os.walk(photo_dir) for f in fs)
    expected = hashlib.sha256("".join(f"{n}\t{_sha256(photo_dir / n)}\n" for n in files).encode()).hexdigest()
    listing = list_local_folder(str(photo_dir))
    assert [it.name for it in listing.items] == files and len(files) == 12
    assert listing.digest() == expected
    assert listing.skipped == [] and listing.summary()["skipped_by_reason"] == {}


# ------------------------------------------------------------------ unreadable files and folders
def _wrappers() -> list[tuple[str, object]]:
    """Ways to run a command unable to read a mode-000 file: as is (not root), setpriv, capsh."""
    out = []
    if os.geteuid() != 0:
        out.append(("as is", lambda cmd: list(cmd)))
    if shutil.which("setpriv"):
        out.append(("setpriv", lambda cmd: ["setpriv", "--inh-caps=-all", "--ambient-caps=-all",
                                            "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]))
    if shutil.which("capsh"):
        out.append(("capsh", lambda cmd: ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--",
                                          "-c", shlex.join(cmd)]))
    return out


@pytest.fixture(scope="module")
def without_read_override(tmp_path_factory):
    """A function wrapping a command so that mode-000 files are unreadable to it; skips the test
    when no wrapper works here (e.g. no setpriv/capsh, or a sandbox that forbids dropping caps)."""
    probe = tmp_path_factory.mktemp("probe") / "locked"
    probe.write_bytes(b"x")
    probe.chmod(0)
    check = [sys.executable, "-c", f"open({str(probe)!r}, 'rb')"]
    try:
        for _, wrap in _wrappers():
            runs_at_all = subprocess.run(wrap([sys.executable, "-c", "pass"]), capture_output=True).returncode == 0
            denied = subprocess.run(wrap(check), capture_output=True, text=True)
            if runs_at_all and denied.returncode != 0 and "PermissionError" in denied.stderr:
                return wrap
        pytest.skip("cannot make a mode-000 file unreadable here (no working setpriv/capsh)")
    finally:
        probe.chmod(0o600)


@pytest.fixture
def locked_source(tmp_path):
    """3 readable images (one in a sub-folder), an unreadable image and an unreadable folder."""
    src = tmp_path / "src"
    for i, name in enumerate(["a.png", "b.png", "open/c.png", "locked.png", "locked_dir/d.png"]):
        _photo(src / name, 10 + i)
    (src / "locked.png").chmod(0)
    (src / "locked_dir").chmod(0)
    yield src
    (src / "locked.png").chmod(0o644)
    (src / "locked_dir").chmod(0o755)


def test_unreadable_file_and_folder_are_skipped_and_the_job_completes(tmp_path, locked_source,
                                                                       without_read_override):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pairforge.clusters.cli", "synth", "--source", str(locked_source),
           "--out", str(out), "--executor", "inline", "--patch-size", "64", "--patches-per-image", "2",
           "--no-progress"]
    proc = subprocess.run(without_read_override(cmd), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    url = proc.stdout.strip().splitlines()[-1]
    with open(os.path.join(url, "manifest.json")) as f:
        man = json.load(f)
    assert man["source"]["skipped"] == 2
    assert man["source"]["skipped_by_reason"] == {"unreadable": 1, "unreadable_folder": 1}
    with open(os.path.join(url, "job.json")) as f:
        assert json.load(f)["source"]["skipped_by_reason"] == {"unreadable": 1, "unreadable_folder": 1}
    # every readable image became pairs, none was dropped later
    assert man["totals"]["inputs"] == 3 and man["totals"]["skipped_inputs"] == 0
    assert man["totals"]["samples"] == 3 * 2
    # and the user is told, not only the manifest
    assert "listing: 2 files/folders left out: unreadable 1, unreadable_folder 1" in proc.stdout


def test_unreadable_entries_of_a_list_file_are_skipped_with_their_reason(tmp_path, locked_source,
                                                                         without_read_override):
    lst = locked_source / "inputs.txt"
    lst.write_text("a.png\nlocked.png\nlocked_dir/d.png\nopen/c.png\n")
    script = ("import json, sys; from pairforge.pipeline.sources import list_source; "
              "l = list_source(sys.argv[1]); "
              "print(json.dumps({'names': [i.name for i in l.items], 'skipped': getattr(l, 'skipped', None)}))")
    proc = subprocess.run(without_read_override([sys.executable, "-c", script, str(lst)]), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["names"] == ["a.png", "open/c.png"]
    assert [(s["name"], s["reason"]) for s in got["skipped"]] == [("locked.png", "unreadable"),
                                                                  ("locked_dir/d.png", "unreadable")]
    assert all(s["detail"].startswith("PermissionError: ") for s in got["skipped"])
    # the same file as the whole source: a clear error naming the reason, not a traceback
    proc = subprocess.run(without_read_override([sys.executable, "-c", script, str(locked_source / "locked.png")]),
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "SourceError" in proc.stderr and "unreadable (PermissionError" in proc.stderr


# ---------------------------------------------------------------- a pairforge dataset as a source
def _cut_at_a_member_boundary(tar_path) -> int:
    """Truncate a tar at the header of a middle member: what is left is a shorter archive that a
    streaming tar reader ends without an error. Returns the members left."""
    import tarfile

    with tarfile.open(tar_path) as tf:
        members = tf.getmembers()
    keep = len(members) // 2
    with open(tar_path, "r+b") as f:
        f.truncate(members[keep].offset)
    return keep


def test_a_truncated_shard_of_a_source_dataset_is_named_not_silently_dropped(training_pairs, tmp_path):
    """A pairforge dataset read as a synth source goes through the shard contract's resolver and
    checks (size first, sha256 at the end). Before, its shards were listed from the manifest but
    never checked: a shard cut at a member boundary just gave fewer images."""
    from pairforge.pipeline.sources import SourceError, list_source

    src = tmp_path / "source-dataset"
    shutil.copytree(training_pairs, src)
    intact = len(list_source(f"wds:{src}").items)
    shard = json.loads((src / "manifest.json").read_text())["shards"][0]["name"]
    assert _cut_at_a_member_boundary(src / shard) > 0
    with pytest.raises(SourceError) as info:
        list_source(f"wds:{src}")
    assert shard in str(info.value) and "damaged shard" in str(info.value), str(info.value)
    assert intact == json.loads((src / "manifest.json").read_text())["totals"]["samples"]

    # the command in its own process: an in-process CLI call would leave its Ray settings in this one
    res = subprocess.run([sys.executable, "-m", "pairforge.clusters.cli", "synth", "--source", f"wds:{src}", "--out",
                          str(tmp_path / "out"), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("pairforge synth: error: source damaged shard") and shard in line, line
    assert not (tmp_path / "out").exists()
