# `make demo`: set up (first time) and run the main job. `make test`: set up (first time) and run the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo train test bench clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "orch needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored: it is neither" || true
	$(PY) -c 'import torch, ray, mlflow, optuna, pyarrow, typer, training, orchestrator'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/orch sweep sweeps/k_interval.yaml

test: $(STAMP)
	$(PY) -m pytest -q --timeout=900

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/method_cost.py
	$(PY) benchmarks/sweep_efficiency.py

clean:
	rm -rf $(VENV) orch_data .pytest_cache
