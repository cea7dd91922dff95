"""Install requirements into the running virtual environment, fast: uv with pip's own settings.

    .venv/bin/python tools/venv_install.py torch==2.14.1 torchvision==0.29.1 -e '.[test]'

Why: ``make test`` and ``make demo`` build ``.venv`` on a fresh machine, and pip needs more than two
minutes for pairforge's ~150 distributions (CUDA wheels included) on two cores — an eighth of the
test suite's budget. uv resolves and installs the same pins in about twenty seconds. uv does not
read pip's configuration, so this passes it along as uv's flags: the index and extra indexes, local
wheel folders (``find-links``), constraint files, ``no-index``, trusted hosts, the CA bundle and the
timeout, from ``pip config list`` (files and ``PIP_*`` variables alike). pip looks at every index
for the best version; uv by default stops at the first index that has a name, so
``--index-strategy unsafe-best-match`` keeps pip's choice.

Anything that goes wrong on the uv path (uv not installable, an unknown setting, a failed
resolve) falls back to plain pip with the same arguments, so the result never depends on uv.
``PAIRFORGE_INSTALLER=pip`` skips uv altogether. Standard library only: it runs before anything
is installed.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

#: pip setting → uv flag; a setting may hold several values (space- or newline-separated)
_REPEATED = {"extra-index-url": "--extra-index-url", "find-links": "--find-links",
             "constraint": "--constraint", "trusted-host": "--allow-insecure-host"}
#: settings uv cannot follow: their presence sends the install to pip
_UNSUPPORTED = ("client-cert", "proxy", "require-hashes", "pre", "only-binary", "no-binary")


def pip_settings(python: str = sys.executable) -> dict[str, str]:
    """pip's effective configuration as ``{name: value}`` (``global.find-links`` → ``find-links``)."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    settings: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        section, _, name = key.rpartition(".")
        # pip's precedence: PIP_* variables, then the [install] section, then [global]
        rank = {":env:": 3, "install": 2}.get(section, 1)
        if rank >= settings.get(name, (0, ""))[0]:
            settings[name] = (rank, value.strip().strip("'\""))
    return {name: value for name, (_, value) in settings.items()}


def uv_flags(settings: dict[str, str]) -> list[str]:
    """uv's flags for pip's settings; ValueError names a setting uv cannot follow."""
    for name in _UNSUPPORTED:
        if name in settings:
            raise ValueError(f"pip setting {name!r} has no uv equivalent here")
    flags = ["--index-strategy", "unsafe-best-match"]
    if settings.get("index-url"):
        flags += ["--index-url", settings["index-url"]]
    for name, flag in _REPEATED.items():
        for value in settings.get(name, "").split():
            flags += [flag, value]
    if settings.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    return flags


def uv_environment(settings: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    if settings.get("cert"):
        env.setdefault("SSL_CERT_FILE", settings["cert"])
    timeout = settings.get("timeout") or settings.get("default-timeout")
    if timeout:
        env.setdefault("UV_HTTP_TIMEOUT", timeout)
    return env


def install_with_uv(requirements: list[str]) -> bool:
    """True when uv installed everything; False (having said why) to let pip do it."""
    python = sys.executable
    try:
        # -qq: pip warns about every local index that lacks uv before finding it on the next
        subprocess.run([python, "-m", "pip", "install", "-qq", "uv"], check=True)
        settings = pip_settings(python)
        flags = uv_flags(settings)
        uv = os.path.join(os.path.dirname(python), "uv")
        # --compile-bytecode: pip writes .pyc files at install time, uv does not; where
        # PYTHONDONTWRITEBYTECODE is set (CI images often set it) every process would then compile
        # torch, diffusers and transformers from source on each start (measured: +60 % suite CPU)
        cmd = [uv, "pip", "install", "-q", "--compile-bytecode", "--python", python, *flags, *requirements]
        subprocess.run(cmd, check=True, env=uv_environment(settings))
        return True
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"venv_install: uv not used ({exc}); installing with pip", file=sys.stderr)
        return False


def install_with_pip(requirements: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *requirements], check=True)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    if os.environ.get("PAIRFORGE_INSTALLER", "uv") == "pip" or not install_with_uv(argv):
        install_with_pip(argv)
    print(f"installed into {sys.prefix}: {shlex.join(argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
