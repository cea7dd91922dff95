"""tools/venv_install.py hands pip's own settings to uv, so `make` builds the venv pip would build.

The settings come from the real ``pip config list`` (a config file and PIP_* variables), and a
setting uv cannot follow sends the install to pip rather than being dropped.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("venv_install", ROOT / "tools" / "venv_install.py")
venv_install = importlib.util.module_from_spec(spec)
spec.loader.exec_module(venv_install)


def _settings_with(tmp_path: Path, monkeypatch, config: str, **env: str) -> dict[str, str]:
    """pip_settings() (it asks a real ``pip config list``) with only this config file and these PIP_*."""
    conf = tmp_path / "pip.conf"
    conf.write_text(config)
    for k in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(k)
    for k, v in {"PIP_CONFIG_FILE": str(conf), **env}.items():
        monkeypatch.setenv(k, v)
    return venv_install.pip_settings()


def test_pip_settings_follow_pips_precedence(tmp_path, monkeypatch):
    settings = _settings_with(
        tmp_path, monkeypatch,
        "[global]\nindex-url = https://mirror.example/simple\nfind-links = /global/wheels\n"
        "[install]\nfind-links = /install/wheels\n",
        PIP_EXTRA_INDEX_URL="file:///a/simple file:///b/simple", PIP_CONSTRAINT="/c.txt")
    assert settings["index-url"] == "https://mirror.example/simple"
    assert settings["find-links"] == "/install/wheels"  # [install] over [global]
    assert settings["extra-index-url"] == "file:///a/simple file:///b/simple"
    assert settings["constraint"] == "/c.txt"


def test_env_variables_win_over_the_config_file(tmp_path, monkeypatch):
    settings = _settings_with(tmp_path, monkeypatch, "[global]\nfind-links = /from/file\n", PIP_FIND_LINKS="/from/env")
    assert settings["find-links"] == "/from/env"


def test_uv_flags_carry_every_index_folder_and_constraint():
    flags = venv_install.uv_flags({"index-url": "https://m/simple", "extra-index-url": "file:///a file:///b",
                                   "find-links": "/w1\n/w2", "constraint": "/c.txt", "no-index": "true",
                                   "trusted-host": "m"})
    pairs = list(zip(flags[::2], flags[1::2]))
    assert ("--index-strategy", "unsafe-best-match") in pairs  # pip's best-version-of-all-indexes choice
    assert ("--index-url", "https://m/simple") in pairs
    assert [v for k, v in pairs if k == "--extra-index-url"] == ["file:///a", "file:///b"]
    assert [v for k, v in pairs if k == "--find-links"] == ["/w1", "/w2"]
    assert ("--constraint", "/c.txt") in pairs and ("--allow-insecure-host", "m") in pairs
    assert "--no-index" in flags


@pytest.mark.parametrize("setting", ["proxy", "client-cert", "require-hashes"])
def test_a_setting_uv_cannot_follow_sends_the_install_to_pip(setting):
    with pytest.raises(ValueError, match=setting):
        venv_install.uv_flags({setting: "x"})


def test_the_makefile_builds_the_venv_through_it():
    makefile = (ROOT / "Makefile").read_text()
    assert "tools/venv_install.py torch==" in makefile


def test_the_installed_packages_carry_their_bytecode():
    """pip compiles .pyc at install time, uv only with --compile-bytecode; with
    PYTHONDONTWRITEBYTECODE set (as on CI images) a venv without them recompiles torch, diffusers
    and transformers from source in every process (it made the suite's CPU time 1.6×)."""
    import torch

    assert Path(importlib.util.cache_from_source(torch.__file__)).is_file()
    assert "--compile-bytecode" in (ROOT / "tools" / "venv_install.py").read_text()
