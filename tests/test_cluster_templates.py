"""The deployment templates in clusters/templates/ work as far as this machine can tell.

For every template: it parses (YAML, JSON, ``bash -n``, DeepSpeed's hostfile format), its
required fields are there (Ray cluster launcher: Ray's own JSON schema; KubeRay: ray.io/v1,
kind, entrypoint, GPU workers, S3 from a Secret; DeepSpeed JSON: DeepSpeed's own config
parser), docs/clusters.md shows a command that uses it, and every command the templates and
that guide run parses with the real parsers: ``pairforge`` through
``pairforge.clusters.cli.build_parser``, ``torchrun`` through torch's, ``deepspeed`` through
DeepSpeed's. Train configs and ``--set`` keys load through the real config layer, and every
repository path a template or the guide names exists.

Shell text is read the way a shell would split it (``shlex`` with operators), after variables
are replaced by their ``${VAR:-default}`` or a placeholder; a quoted command (``ray exec ...
'pairforge synth ...'``, ``bash -c``) is searched again inside the quotes.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "clusters" / "templates"
GUIDE = REPO / "docs" / "clusters.md"
SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ">", ">>", "<"}
#: a repository path named in a template or the guide
_REPO_PATH = re.compile(r"(?<![\w/.~-])((?:clusters/templates|docs)/[\w./-]*\w)")


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.rglob("*") if p.is_file() and p.name != "__init__.py"
                  and "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# ------------------------------------------------------------------------------ reading shell text
_ARITH = re.compile(r"\$\(\((?:[^()]|\([^()]*\))*\)\)")
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?=+])([^}]*))?\}")
_PLAIN = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*|\$[0-9@#?*]")
_ANGLE = re.compile(r"<[a-z][a-z0-9 _-]*>")  # placeholders like <dataset-id> in prose


def expand(text: str, env: dict[str, str] | None = None) -> str:
    """Shell variables → the value the text assigned them, their default (``${V:-d}``), or a
    placeholder word."""
    env = env or {}

    def braced(m: re.Match) -> str:
        if m.group(1) in env:
            return env[m.group(1)]
        return m.group(3) if m.group(2) in ("-", "=") else "VALUE"

    text = _ARITH.sub("8", text)
    text = _BRACED.sub(braced, text)
    text = _PLAIN.sub(lambda m: env.get(m.group(0)[1:], "VALUE"), text)
    return _ANGLE.sub("VALUE", text)


_ASSIGNMENT = re.compile(r"^(?:export\s+)?([A-Za-z_]\w*)=(\S+)$")


def assign(line: str, env: dict[str, str]) -> None:
    """Record ``NAME=value`` (a literal or ``${NAME:-default}``; command output is unknown)."""
    m = _ASSIGNMENT.match(line)
    if m:
        env[m.group(1)] = "VALUE" if "$(" in m.group(2) else expand(m.group(2), env).strip("\"'")


def logical_lines(text: str, comments: bool) -> list[str]:
    """Lines with backslash continuations joined; comment lines dropped unless ``comments``."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            if not comments:
                continue
            line = line.lstrip("#").strip()
        current = f"{current} {line}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current:
            lines.append(current)
        current = ""
    return lines + ([current] if current else [])


def split_commands(line: str, env: dict[str, str] | None = None) -> list[list[str]]:
    """The simple commands of one shell line (split at ;, &&, |, ...), quoted commands included."""
    lexer = shlex.shlex(expand(line, env), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS or set(token) <= set(";&|()<>"):
            commands.append(current)
            current = []
            continue
        if " " in token and _runs_quoted(current):
            commands += split_commands(token)  # a quoted command line (ray exec CFG '...', bash -c '...')
        current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def _runs_quoted(before: list[str]) -> bool:
    """Whether the next word is a command line another program runs (``bash -c``, ``ray exec CFG``)."""
    return before[-1:] == ["-c"] or before[:2] == ["ray", "exec"]


def _is_command(cmd: list[str], i: int) -> bool:
    """Word ``i`` is in command position: first, after ``VAR=value`` words, after ``--``, or
    anywhere in a command that runs another one (``srun [options] torchrun ...``)."""
    return (all("=" in w and not w.startswith("-") for w in cmd[:i]) or cmd[i - 1:i] == ["--"]
            or cmd[0] in ("srun", "env", "exec", "nohup", "time"))


@dataclass(frozen=True)
class Invocation:
    where: str
    tool: str          # pairforge | torchrun | deepspeed
    argv: list[str]    # after the program name

    def __str__(self) -> str:
        return f"{self.where}: {self.tool} {shlex.join(self.argv)}"


def invocations(where: str, text: str, comments: bool = False) -> list[Invocation]:
    """Every pairforge / torchrun / deepspeed command in ``text``."""
    found, env = [], {}
    for line in logical_lines(text, comments):
        assign(line, env)
        for cmd in split_commands(line, env):
            for i, token in enumerate(cmd):
                name = Path(token).name
                if name in ("pairforge", "torchrun", "deepspeed") and _is_command(cmd, i):
                    found.append(Invocation(where, name, cmd[i + 1:]))
                    break
                if token == "-m" and cmd[i + 1:i + 2] == ["pairforge.clusters.cli"] and "torchrun" not in cmd[:i]:
                    found.append(Invocation(where, "pairforge", cmd[i + 2:]))
                    break
    return found


def code_blocks(markdown: str) -> list[str]:
    """The bodies of the guide's shell code blocks."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", markdown, flags=re.S | re.M)
    return [body for lang, body in blocks if lang in ("", "bash", "sh", "shell")]


def yaml_commands(doc, where: str) -> list[Invocation]:
    """Commands in a YAML document: RayJob entrypoints, Ray launcher command lists."""
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "entrypoint" and isinstance(value, str):
                found += invocations(f"{where} ({key})", value)
            elif key.endswith("_commands") and isinstance(value, list):
                found += [inv for line in value for inv in invocations(f"{where} ({key})", line)]
            else:
                found += yaml_commands(value, where)
    elif isinstance(doc, list):
        found += [inv for item in doc for inv in yaml_commands(item, where)]
    return found


def all_invocations() -> list[Invocation]:
    found = []
    for path in template_files():
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            for doc in yaml.safe_load_all(text):
                found += yaml_commands(doc, rel(path))
        elif path.suffix in (".sbatch", ".sh"):
            found += invocations(rel(path), text)
    for block in code_blocks(GUIDE.read_text()):
        found += invocations(rel(GUIDE), block)
    return found


# ------------------------------------------------------------------------------ checking commands
def parse_pairforge(inv: Invocation):
    from pairforge.clusters.cli import build_parser

    parser, chosen = build_parser(inv.argv)
    assert chosen is not None, f"{inv}: no pairforge command"
    try:
        return parser.parse_args(inv.argv)
    except SystemExit as exc:
        pytest.fail(f"{inv}: the pairforge parser refused it (exit {exc.code})")


def pairforge_of_launcher(inv: Invocation) -> Invocation:
    """The pairforge command a torchrun/deepspeed line starts, parsed with that launcher's parser."""
    if inv.tool == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(inv.argv)
        assert args.module and args.training_script == "pairforge.clusters.cli", str(inv)
        return Invocation(inv.where, "pairforge", list(args.training_script_args))
    from deepspeed.launcher.runner import parse_args

    args = parse_args(inv.argv)
    assert args.module and args.user_script == "pairforge.clusters.cli", str(inv)
    assert args.no_local_rank, f"{inv}: without --no_local_rank DeepSpeed puts --local_rank before `train`"
    return Invocation(inv.where, "pairforge", list(args.user_args))


def check_train_config(inv: Invocation, args) -> None:
    """A train command's --config/--preset and --set keys load through the real config layer."""
    from pairforge.clusters.commands.train import _overrides
    from pairforge.training.config import load_config

    if args.config and not (REPO / args.config).is_file():
        pytest.fail(f"{inv}: --config {args.config} does not exist (relative to the checkout)")
    overrides = _overrides(args)
    if args.config:
        load_config(str(REPO / args.config), overrides=overrides)
    else:
        load_config(preset=args.preset, overrides=overrides)


def check_synth_preset(inv: Invocation, args) -> None:
    from pairforge.degradations.config import available_presets

    if args.preset and args.preset != "VALUE":
        assert args.preset in available_presets(), f"{inv}: unknown degradation preset {args.preset}"


@pytest.fixture(scope="module")
def found() -> list[Invocation]:
    return all_invocations()


def test_the_templates_and_the_guide_run_commands(found):
    tools = {(inv.where.split(" ")[0], inv.tool) for inv in found}
    for where, tool in [("clusters/templates/kuberay-rayjob.yaml", "pairforge"),
                        ("clusters/templates/slurm-synth.sbatch", "pairforge"),
                        ("clusters/templates/slurm_train.sbatch", "torchrun"),
                        ("docs/clusters.md", "pairforge")]:
        assert (where, tool) in tools, f"no {tool} command found in {where}: the extraction is broken"
    assert len([i for i in found if i.where.startswith("docs/clusters.md")]) >= 10


def test_every_pairforge_command_and_flag_exists(found, monkeypatch):
    monkeypatch.chdir(REPO)
    checked = 0
    for inv in found:
        if inv.tool != "pairforge":
            inv = pairforge_of_launcher(inv)
        args = parse_pairforge(inv)
        if args.command == "train":
            check_train_config(inv, args)
        elif args.command == "synth":
            check_synth_preset(inv, args)
        checked += 1
    assert checked >= 15


def test_every_template_is_used_by_a_documented_command():
    """Named in a command of the guide, or by a template that is (train_d3sr.yaml → zero2.json)."""
    used = set(_REPO_PATH.findall("\n".join(code_blocks(GUIDE.read_text()))))
    frontier = set(used)
    while frontier:
        frontier = {name for p in frontier if (REPO / p).is_file() for name in _REPO_PATH.findall((REPO / p).read_text())}
        frontier -= used
        used |= frontier
    for path in template_files():
        assert rel(path) in used, f"docs/clusters.md shows no command that uses {rel(path)}"


def test_every_repository_path_named_exists():
    for path in [*template_files(), GUIDE]:
        for name in _REPO_PATH.findall(path.read_text()):
            assert (REPO / name).exists(), f"{rel(path)} names {name}, which does not exist"


# ------------------------------------------------------------------------------ per template
def test_shell_templates_parse():
    for path in TEMPLATES.glob("*.sbatch"):
        res = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert res.returncode == 0, f"{rel(path)}: {res.stderr}"
        text = path.read_text()
        assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
        assert re.search(r"^#SBATCH --nodes=\d+", text, flags=re.M), rel(path)


def test_the_ray_launcher_config_follows_rays_schema():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    path = TEMPLATES / "ray-cluster.yaml"
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)
    assert config["cluster_name"] and config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu and all(t.get("min_workers", 0) >= 1 for t in gpu), "GPU workers, up before synth starts"
    # S3 credentials from the environment: a file of exports, mounted on every node and read
    # before Ray starts there; no key in the template itself
    (remote, local), = config["file_mounts"].items()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any(f". {remote}" in c and "ray start" in c for c in config[key]), key
    assert "AWS_SECRET_ACCESS_KEY" not in path.read_text()
    guide = GUIDE.read_text()
    assert local in guide and "AWS_SECRET_ACCESS_KEY" in guide


def _kuberay(name: str) -> dict:
    docs = [d for d in yaml.safe_load_all((TEMPLATES / name).read_text()) if d]
    assert len(docs) == 1, name
    doc = docs[0]
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    return doc


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    for group in [head, *groups]:
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), \
            f"{where}: rayStartParams values must be strings"
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] and container["name"]
        assert {"secretRef": {"name": "pairforge-s3"}} in container["envFrom"], f"{where}: S3 from the Secret"
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups)
    for g in groups:
        assert g["groupName"] and g.get("minReplicas", 0) <= g["replicas"] <= g.get("maxReplicas", g["replicas"])


def test_the_kuberay_rayjob_runs_synth_on_its_own_cluster():
    job = _kuberay("kuberay-rayjob.yaml")
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("pairforge synth ") and "--ray-address auto" in spec["entrypoint"]
    assert "--resume" in spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    _check_ray_cluster_spec(spec["rayClusterSpec"], "kuberay-rayjob.yaml")


def test_the_kuberay_raycluster_is_there_for_synth():
    cluster = _kuberay("kuberay-raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"]
    _check_ray_cluster_spec(cluster["spec"], "kuberay-raycluster.yaml")
    guide = GUIDE.read_text()
    assert "kubectl exec" in guide and "ray.io/cluster=" + cluster["metadata"]["name"] in guide


def test_the_hostfile_is_what_deepspeed_reads():
    from deepspeed.launcher.runner import fetch_hostfile

    from pairforge.training.runtime.launch import read_hostfile

    path = TEMPLATES / "hostfile.example"
    ours = read_hostfile(path)
    assert ours and dict(fetch_hostfile(str(path))) == ours


def test_deepspeed_configs_are_accepted_by_deepspeed():
    from deepspeed.runtime.config import DeepSpeedConfig

    from pairforge.training.config import load_config
    from pairforge.training.loop.engines import deepspeed_config

    cfg = load_config(preset="tiny")
    for stage in (1, 2, 3):
        path = TEMPLATES / "deepspeed" / f"zero{stage}.json"
        merged = deepspeed_config(cfg.engine, cfg.optim_g, micro_batch=2, override_path=str(path))
        parsed = DeepSpeedConfig(merged)  # pydantic models refuse unknown ZeRO keys
        assert parsed.zero_optimization_stage == stage and parsed.bfloat16_config.enabled


def test_the_example_train_config_loads_and_uses_matching_engine_files(monkeypatch):
    from pairforge.training.config import load_config

    monkeypatch.chdir(REPO)
    cfg = load_config(str(TEMPLATES / "train_d3sr.yaml"))
    for override in (cfg.engine.deepspeed_g, cfg.engine.deepspeed_d):
        data = json.loads((REPO / override).read_text())
        assert data["zero_optimization"]["stage"] == cfg.engine.zero_stage, override
        assert data.get("bf16", {}).get("enabled", False) == (cfg.engine.precision == "bf16"), override
