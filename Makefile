# pairforge — two commands for a new user: `make demo` and `make test`.
# Both create .venv when it is missing (torch 2.14.1 + torchvision 0.29.1, then the project).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pairforge-installed
DEMO_OUT ?= demo-out

.PHONY: demo test venv bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/pairforge demo --out $(DEMO_OUT)

bench: $(STAMP)
	$(PY) bench/degradations.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
