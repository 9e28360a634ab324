# Harvest: `make run` sets everything up and runs the default job; `make test` runs the tests.
# Both are idempotent: the venv is (re)built only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU-only torch: this version's CPU wheel is on the project's machines; the pyproject range stays open.
TORCH_PIN ?= torch==2.13.0

# The real Robocode engine (issue 5) and a JDK and Xvfb to host it, and xdotool (the scripted
# driver types into the teleoperation window, issue 9): Debian packages.
SYSTEM_PACKAGES := robocode default-jdk xvfb xdotool
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-core system run test test-fast lint format docs bench clean

# `make run` needs the core alone (CartPole needs no system package); `make setup` and `make test`
# install everything: every extra, the test tools and the system packages.
setup: system $(VENV)/.installed
setup-core: $(VENV)/.core

system:
	@if command -v javac >/dev/null && command -v Xvfb >/dev/null && command -v xdotool >/dev/null && ls /usr/share/java/robocode.battle-*.jar >/dev/null 2>&1; then \
		true; \
	elif command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(SYSTEM_PACKAGES); \
	else \
		echo "warning: no apt-get here; install $(SYSTEM_PACKAGES) yourself for Robocode (its tests are skipped)"; \
	fi

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip uninstall --quiet --yes harvest 2>/dev/null || true  # the distribution's name before harvest-rl
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e . "$(TORCH_PIN)"
	touch $@

$(VENV)/.installed: $(VENV)/.core
	$(PY) -m pip install --quiet -e ".[all,test]" "$(TORCH_PIN)"
	touch $@

# Harvest's own modules compiled once (where PYTHONDONTWRITEBYTECODE is set, every process -
# each Ray worker - would otherwise compile them again as it imports them); cheap when up to date.
SOURCES := harvest
# Test processes run side by side (pytest-xdist), each with its own small local Ray cluster.
TEST_WORKERS ?= 2

run: setup-core
	@$(PY) -m compileall -q $(SOURCES) >/dev/null
	$(VENV)/bin/harvest run $(CONFIG)

# The docs build is part of the tests: a page that names a config key, command or option the code
# no longer has fails it (see `docs`).
test: setup docs lint
	@$(PY) -m compileall -q $(SOURCES) tests >/dev/null
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

# ruff: lint and format, checked; mypy: the types of package harvest (settings of both in
# pyproject.toml). `make format` applies ruff's fixes and format.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test-fast: setup
	@$(PY) -m compileall -q $(SOURCES) tests >/dev/null
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow"

# The docs site (mkdocs.yml, docs/) in site/. --strict makes every warning an error: a broken link
# or anchor, and what docs/hooks.py finds - the config and CLI references are generated from the
# pydantic models and the argparse parser at every build, and a page naming a key, command or
# option they lack is a warning. It needs the core and the `docs` extra, no system package.
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2 on every build.
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

$(VENV)/.docs: $(VENV)/.core
	$(PY) -m pip install --quiet -e ".[docs]" "$(TORCH_PIN)"
	touch $@

bench: setup
	$(PY) -m pip install --quiet -e ".[bench]" "$(TORCH_PIN)"
	$(PY) bench/replay.py
	test -x .venv-rllib/bin/python || ($(PYTHON) -m venv .venv-rllib && .venv-rllib/bin/pip install --quiet "ray[rllib]==2.60.0" "$(TORCH_PIN)")
	$(PY) bench/learners.py
	$(PY) bench/collect.py
	$(PY) bench/generals.py
	$(PY) bench/robocode.py

clean:
	rm -rf $(VENV) .venv-rllib artifacts .pytest_cache
