# pairforge — two commands for a new user: `make demo` and `make test`.
# Both create .venv when it is missing (torch 2.14.1 + torchvision 0.29.1, then the project).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pairforge-installed
DEMO_OUT ?= demo-out
# extra pytest arguments, e.g. PYTEST_ARGS='-k synth' or PYTEST_ARGS='-m "not slow"'
PYTEST_ARGS ?=
# test files run on this many pytest-xdist workers (0: one process). Whole files go to one worker
# (--dist loadfile), so a module's expensive fixtures (a killed launcher, a trained run) run once;
# each worker has its own moto server and Ray. Much of the suite waits on subprocesses, Ray and
# kill/resume scenarios, so two workers fit two cores. Files go out longest first (tests/conftest.py:
# LONGEST_FILES_FIRST); xdist's default order (most tests first) left the few-but-long kill scenarios
# for the end, one worker running them while the other sat idle.
PYTEST_WORKERS ?= 2

.PHONY: demo test lint venv bench wheelhouse full-size gpu-check clean

venv: $(STAMP)

# one resolve for torch and the project; uv with pip's own settings (~20 s instead of pip's ~2 min
# on 2 cores), plain pip whenever uv cannot be used (tools/venv_install.py; PAIRFORGE_INSTALLER=pip)
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/venv_install.py torch==2.14.1 torchvision==0.29.1 -e '.[test]'
	@touch $(STAMP)

# lint first (seconds): a finding fails `make test` before the suite's minutes are spent
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/pairforge demo --out $(DEMO_OUT)

bench: $(STAMP)
	$(PY) bench/degradations.py

# an offline bundle for a GPU node that has its own torch: every other wheel pairforge needs
# (docs/clusters.md, "Air-gapped GPU nodes"); WHEELHOUSE_ARGS='--without ray' for a training-only node
WHEELHOUSE ?= wheelhouse
WHEELHOUSE_ARGS ?=
wheelhouse: $(STAMP)
	$(PY) tools/wheelhouse.py $(WHEELHOUSE) $(WHEELHOUSE_ARGS)

# the full-size d3sr-sd21 preset (random SD2.1 weights) through train/resume/upscale/eval on this
# machine; minutes and ~15 GB of memory per rank, so not part of `make test`
full-size: $(STAMP)
	$(PY) bench/full_size_commands.py --out bench/results/full-size-$$(date +%F).md

# one GPU node, a few minutes: CUDA tests, degradation GPU rows beside CPU, a full-size bf16 step per
# ZeRO stage, upscale latency and tiled memory; one results file (bench/gpu_check.py). Without CUDA
# it says what it skipped and exits 0. GPU_CHECK_ARGS='--skip train-step' and so on.
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
