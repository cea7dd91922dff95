"""Every command and code block in the README and docs/ runs as written.

The blocks are read out of the Markdown files themselves (```bash and ```python fences), so a
snippet that drifts from the code fails here.  They run in document order, one reader's
session per file, in a scratch folder that holds what a reader is told to bring: ``photos/``
(a few real photos), ``photo.png``, and an S3 bucket named ``bucket`` on the loopback moto
server (the AWS variables point at it).  What a reader fills in is filled in:

* ``<id>`` / ``<dataset-id>`` in ``ROOT/PREFIX-<id>``: the dataset the session made there;
* sizes shrink so the suite stays fast: ``--steps N`` → N // 150 (300 → 2, a resume to
  600 → 4), ``--patches-per-image``/``--workers`` → 1, training crops 32 px, no validation,
  ``eval --limit 2``. The sessions of docs/training.md and docs/clusters.md train several
  times and run with ``PAIRFORGE_DOCS_ALL=1`` (both passed when added).

Lines that cannot run on a CPU machine without downloads are still checked to fail the way
the docs promise (``EXPECTED_REFUSALS``). Other programs (make, tensorboard, ray, kubectl,
sbatch, …) are not run: their lines are checked for what can be checked here (make targets
exist, benchmark scripts answer ``--help``; tests/test_cluster_templates.py parses the
pairforge commands inside cluster tools' lines). Paths on a reader's own machine
(``/data/photos``, ``s3://my-bucket``) map into the scratch folder (``PATH_MAP``).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PAIRFORGE = [sys.executable, "-m", "pairforge.clusters.cli"]

#: flags appended to every documented `pairforge train` so it finishes in seconds
FAST_TRAIN = ["--crop-size", "32", "--batch-size", "2", "--val-every", "0", "--set", "log.tensorboard=false",
              "--set", "log.image_every=0"]
#: documented commands that need what a CPU test machine lacks, and the clear refusal they give
EXPECTED_REFUSALS = {
    "--preset d3sr-sd21": (2, "pretrained_path|no readable manifest"),  # SD2.1 weights: a local folder only
    "--preset d3sr-sdxl": (2, "pretrained_path|no readable manifest"),
    "train_d3sr.yaml": (2, "pretrained_path|no readable manifest"),
}
#: programs whose lines are checked, not run


@dataclass
class Snippet:
    doc: str
    line: int
    lang: str
    text: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The fenced ```bash / ```python blocks of one Markdown file, with their first line number."""
    out, lang, start, buf = [], None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = re.match(r"^\s*```(\w*)", line)
        if fence and lang is None:
            lang, start, buf = fence.group(1) or "text", n + 1, []
        elif fence:
            if lang in ("bash", "sh", "shell", "python"):
                out.append(Snippet(path.relative_to(ROOT).as_posix(), start, "python" if lang == "python" else "bash",
                                   "\n".join(buf)))
            lang = None
        elif lang is not None:
            buf.append(line)
    return out


def commands(snippet: Snippet) -> list[list[str]]:
    """A shell block as argument lists: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", snippet.text)
    return [argv for line in text.splitlines() if (argv := shlex.split(line, comments=True))]


# ------------------------------------------------------------------------------ fast: everything parses
ALL = [s for doc in DOCS for s in snippets(doc)]


def test_the_docs_have_snippets():
    assert {s.doc for s in ALL} >= {"README.md", "docs/pipeline.md", "docs/training.md"}


@pytest.mark.parametrize("snippet", [s for s in ALL if s.lang == "bash"], ids=str)
def test_every_documented_pairforge_command_parses(snippet):
    from pairforge.clusters.cli import build_parser

    for argv in commands(snippet):
        if argv[0] != "pairforge":
            continue
        args = [a.replace("<id>", "0").replace("<dataset-id>", "x") for a in argv[1:]]
        parser, chosen = build_parser(args)
        assert chosen is not None, f"{snippet}: `{shlex.join(argv)}`: no such command"
        try:
            parser.parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{snippet}: `{shlex.join(argv)}` does not parse (exit {exc.code})")


@pytest.mark.parametrize("snippet", [s for s in ALL if s.lang == "python"], ids=str)
def test_every_python_block_compiles(snippet):
    compile(snippet.text, str(snippet), "exec")


def test_make_targets_and_bench_scripts_exist():
    makefile = (ROOT / "Makefile").read_text()
    for s in ALL:
        for argv in commands(s) if s.lang == "bash" else []:
            if argv[0] == "make":
                assert re.search(rf"^{re.escape(argv[1])}:", makefile, re.M), f"{s}: no make target {argv[1]}"
            if argv[0].endswith("python") and len(argv) > 1 and argv[1].startswith("bench/"):
                assert (ROOT / argv[1]).is_file(), f"{s}: {argv[1]} does not exist"


# ------------------------------------------------------------------------------ slow: a reader's session
#: where the docs point at a reader's own machine, the session's scratch folder stands in
PATH_MAP = {"s3://my-bucket/": "s3://bucket/", "/data/photos": "photos", "/data/pairs": "data-pairs",
            "/shared/": "shared/", "osediff-0123456789abcdef": "osediff-<id>",
            " clusters/templates/": f" {ROOT}/clusters/templates/"}  # "relative to the checkout", says the guide
#: only these programs run; lines of others are checked, not run (see check_only and the fast tests)
RUN = ("pairforge", "python", "echo", "eval")


def _shrink(line: str) -> str:
    """The same command on small inputs (see the module docstring); a trailing comment dropped."""
    line = re.sub(r"\s+#[^'\"]*$", "", line)
    line = re.sub(r"--steps (\d+)", lambda m: f"--steps {max(1, int(m.group(1)) // 150)}", line)
    line = re.sub(r"--(patches-per-image|workers) \d+", r"--\1 1", line)
    line = re.sub(r"pairforge train ", "pairforge train " + " ".join(FAST_TRAIN) + " ", line)
    return re.sub(r"(pairforge eval [^|;)]*)", r"\1 --limit 2", line)


class Session:
    """One reader working through one document in a scratch folder, in bash, line by line;
    ``VAR=$(command)`` keeps the command's last stdout line for the lines after it."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd = cwd
        bin_dir = str(Path(sys.executable).parent)  # `pairforge` and `python` of this environment
        self.env = {**env, "PATH": bin_dir + os.pathsep + env.get("PATH", "")}

    def resolve(self, text: str, lenient: bool = False) -> str:
        """``ROOT/PREFIX-<id>`` → the dataset made under ROOT whose folder starts with PREFIX."""
        for a, b in PATH_MAP.items():
            text = text.replace(a, b)
        while m := re.search(r"(?P<root>[^\s='\"]*?)/?(?P<prefix>[\w.-]*?)-?<(id|dataset-id)>", text):
            root, prefix = m.group("root"), m.group("prefix")
            from pairforge.pipeline import storage

            url = root if "://" in root else str(self.cwd / root)
            names = sorted(n for n in storage.listdir(url) if n.startswith(prefix) and n != "logs") \
                if storage.exists(url) else []
            if not names and lenient:  # a line that is to be refused anyway (it names the dataset it lacks)
                return text.replace("<id>", "0123456789abcdef").replace("<dataset-id>", "missing")
            assert names, f"no dataset {prefix}-<id> under {root} (the document uses it before making it)"
            made = storage.join(url, names[-1]) if "://" in url else f"{root}/{names[-1]}"
            text = text[:m.start()] + made + text[m.end():]
        return text

    def bash(self, line: str) -> subprocess.CompletedProcess:
        t = time.perf_counter()
        res = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=600, cwd=self.cwd,
                             env=self.env)
        print(f"{time.perf_counter() - t:6.1f} s  {line}")
        return res

    def run_bash(self, snippet: Snippet) -> None:
        for line in re.sub(r"\\\n", " ", snippet.text).splitlines():
            argv = shlex.split(line, comments=True)
            if not argv:
                continue
            line = re.sub(r"\s+#[^'\"]*$", "", line)  # a trailing comment (resolve/shrink see commands only)
            assign = re.match(r"^(\w+)=\$\((.*)\)\s*$", line.strip())
            program = shlex.split(assign.group(2))[0] if assign else argv[0]
            if program not in RUN:
                self.check_only(snippet, argv)
                continue
            refusal = next((v for k, v in EXPECTED_REFUSALS.items() if k in line), None)
            command = _shrink(self.resolve(assign.group(2) if assign else line, lenient=refusal is not None))
            res = self.bash(command)
            if refusal:
                code, words = refusal
                assert res.returncode == code and re.search(words, res.stderr), \
                    f"{snippet}: `{line}` should refuse clearly (exit {code}, {words!r}): {res.returncode} " \
                    f"{res.stderr[-1500:]}"
                assert "Traceback" not in res.stderr, f"{snippet}: `{line}`: {res.stderr[-1500:]}"
                continue
            assert res.returncode == 0, f"{snippet}: `{command}` exited {res.returncode}:\n{res.stderr[-3000:]}"
            if assign:
                self.env[assign.group(1)] = res.stdout.strip().splitlines()[-1]

    @staticmethod
    def check_only(snippet: Snippet, argv: list[str]) -> None:
        """A line the session does not run: benchmark scripts must answer --help."""
        if argv[0].endswith("python") and argv[1:2] and argv[1].startswith("bench/"):
            res = subprocess.run([sys.executable, str(ROOT / argv[1]), "--help"], capture_output=True,
                                 text=True, timeout=120, cwd=ROOT)
            assert res.returncode == 0, f"{snippet}: `{argv[1]} --help`: {res.stderr[-1500:]}"

    def run_python(self, snippet: Snippet) -> None:
        code = "\n".join(self.resolve(line) for line in snippet.text.splitlines())
        code = re.sub(r"steps=(\d+)", lambda m: f"steps={max(1, int(m.group(1)) // 150)}", code)
        code = code.replace('train("tiny",', 'train("tiny", overrides={"data.crop_size": 32, "data.batch_size": 2, '
                                             '"log.val_every": 0, "log.tensorboard": False},')
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                             cwd=self.cwd, env=self.env)
        assert res.returncode == 0, f"{snippet} failed:\n{code}\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def reader_inputs(tmp_path_factory):
    """What a reader brings: photos large enough for 512 px patches, one photo.png."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("reader")
    (root / "photos").mkdir()
    for i, img in enumerate([data.coffee(), data.chelsea(), data.astronaut()]):
        Image.fromarray(img).resize((560, 528), Image.BICUBIC).save(root / "photos" / f"p{i}.png")
    Image.fromarray(data.rocket()).resize((48, 40)).save(root / "photo.png")
    return root


def _env() -> dict[str, str]:
    """A user's shell: no launch variables a session fixture may have set in this process."""
    drop = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PAIRFORGE_VERBOSE")
    return {k: v for k, v in os.environ.items() if k not in drop}


#: sessions that train several times: run on demand (PAIRFORGE_DOCS_ALL=1) to keep the suite's time
LONG_SESSIONS = ("docs/training.md", "docs/clusters.md")


@pytest.mark.slow  # runs every documented command: synth on Ray, a few 2-step trainings
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("doc", ["README.md", "docs/pipeline.md", "docs/training.md", "docs/CONTRACTS.md",
                                 "docs/degradations.md", "docs/perceptual.md", "docs/clusters.md"])
def test_a_reader_can_run_every_snippet(doc, reader_inputs, s3_server, tmp_path):
    path = ROOT / doc
    if not path.exists():
        pytest.skip(f"{doc} does not exist")
    if doc in LONG_SESSIONS and not os.environ.get("PAIRFORGE_DOCS_ALL"):
        pytest.skip(f"{doc}: its session trains several times (minutes); PAIRFORGE_DOCS_ALL=1 runs it. "
                    "Its commands are parsed by test_every_documented_pairforge_command_parses")
    s3_server.client().create_bucket(Bucket="bucket") if "bucket" not in {
        b["Name"] for b in s3_server.client().list_buckets()["Buckets"]} else None
    cwd = tmp_path / "session"
    shutil.copytree(reader_inputs, cwd)
    session = Session(cwd, _env())
    for snippet in snippets(path):
        if snippet.lang == "python" and (name := re.match(r"# file: (\S+)", snippet.text)):
            (cwd / name.group(1)).write_text(snippet.text)  # a script to save (tests/test_own_trainer.py runs it)
        elif snippet.lang == "python":
            session.run_python(snippet)
        else:
            session.run_bash(snippet)
