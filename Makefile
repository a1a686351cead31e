# Two commands do all the set-up on a fresh machine: `make demo` and `make test`. Both idempotent.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cordiale-installed
TORCH  := torch==2.13.0

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# torch first, from the CPU wheel, so that pip never resolves a multi-GB CUDA build
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test,imaging]"
	@touch $(STAMP)

demo: $(STAMP)
	@# a fresh consortium each time: idempotent, and every file of the last run stays to look at
	rm -rf demo-results
	$(VENV)/bin/cordiale demo --workdir demo-results

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest -q

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/federated_vs_pooled.py
	$(PY) bench/round_overhead.py
	$(PY) bench/network_round.py
	$(PY) bench/privacy_utility.py
	$(PY) bench/imaging_pipeline.py

clean:
	rm -rf $(VENV) demo-results .pytest_cache .hypothesis .ruff_cache
