# Harvest: `make run` sets everything up and runs the default job; `make test` runs the tests.
# Both are idempotent: the venv is (re)built only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only torch: this version's CPU wheel is on the project's machines; the pyproject range stays open.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup run test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[test]" "$(TORCH_PIN)"
	touch $@

run: setup
	$(VENV)/bin/harvest run $(CONFIG)

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) bench/collect.py
	$(PY) bench/generals.py

clean:
	rm -rf $(VENV) artifacts .pytest_cache
