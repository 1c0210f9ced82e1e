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
	@echo "installing requirements.txt and requirements-test.txt into $(VENV) (~3 min the first time; progress below)"
	set -o pipefail; $(PY) -m pip install --disable-pip-version-check --progress-bar off -r requirements.txt -r requirements-test.txt 2>&1 | $(PYTHON) tools/pip_progress.py
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | $(PYTHON) tools/pip_progress.py
	$(PY) -c 'import torch, ray, mlflow, optuna, pyarrow, typer, training, orchestrator'
	@# headless Chromium for tests/orchestrator/test_browser.py (skipped without it, a failure in CI): Debian's package
	@command -v chromium >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "warning: no chromium and no apt-get: install Chromium to run tests/orchestrator/test_browser.py"; \
	  else \
	    echo "installing chromium (apt-get)"; SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "warning: apt-get install chromium failed: tests/orchestrator/test_browser.py needs it"; \
	  fi; }
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
