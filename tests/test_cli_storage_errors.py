"""An S3 URL that cannot be reached for want of credentials: every command that reads data says so
in one line (exit 2, no traceback, the key never printed) instead of dying in botocore."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]
URL = "s3://pairforge-nobody-bucket/pairs/realesrgan-x4plus-0123456789abcdef"
#: half a key pair: botocore can sign nothing with it
KEY_ID = "AKIAPAIRFORGETESTKEY"


def _no_credentials_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID=KEY_ID,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    return env


@pytest.mark.parametrize("argv", [
    ["train", "--preset", "tiny", "--data", URL, "--out", "{tmp}/run"],
    ["inspect", URL],
    ["ls", "s3://pairforge-nobody-bucket/pairs"],
    ["eval", "--model", "bicubic", "--data", URL, "--out", "{tmp}/eval"],
    ["synth", "--source", "s3://pairforge-nobody-bucket/hr", "--out", "{tmp}/out", "--executor", "inline"],
], ids=lambda a: a[0])
def test_missing_credentials_are_one_clear_line(argv, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    res = subprocess.run([*PAIRFORGE, *args], capture_output=True, text=True, timeout=120,
                         env=_no_credentials_env(tmp_path))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert "AWS_ACCESS_KEY_ID" in res.stderr and "credentials" in res.stderr.lower()
    assert KEY_ID not in res.stderr + res.stdout
    assert len(res.stderr.strip().splitlines()) <= 2, res.stderr


@pytest.mark.parametrize("command", ["inspect", "train"])
def test_an_s3_url_s3_cannot_have_is_a_usage_error(command, s3_server, tmp_path):
    url = "s3://bad…bucket/pairs/x"  # a placeholder copied as is
    argv = [command, url] if command == "inspect" else [command, "--preset", "tiny", "--data", url, "--out",
                                                        str(tmp_path / "run")]
    res = subprocess.run([*PAIRFORGE, *argv], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "not a valid S3 URL" in res.stderr
