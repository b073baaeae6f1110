# pbt-job: `make run` trains the quick population locally, `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install run test bench bench-learning tools clean

install: $(STAMP)

# torch goes first and alone so that pip takes the CPU build lying on disk
# instead of resolving a CUDA build from the index.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "pip==25.3"
	$(PY) -m pip install --quiet --disable-pip-version-check "torch==$$(sed -n 's/^torch==//p' requirements.lock)"
	$(PY) -m pip install --quiet --disable-pip-version-check -c requirements.lock -e ".[test]"
	touch $(STAMP)

run: install
	$(VENV)/bin/pbt-job train --config configs/quick.yaml --storage ./runs

tools: install
	PYTHON=$(PY) scripts/fetch-tools.sh

test: install tools
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	@for script in bench/env_speed.py bench/sampling.py bench/learner.py bench/pbt_overhead.py; do echo "# $$script"; $(PY) $$script; done

bench-learning: install
	$(PY) bench/learning.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .hypothesis
