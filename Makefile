# One command installs everything into .venv and runs the tests: `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv test test-all lint sim dev clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --config-settings editable_mode=compat -e '.[test]'
	touch $@

venv: $(VENV)/.installed

## The default test run (what CI runs): unit, simulation and integration tests.
test: venv
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

## Everything, including the slow soak, simulation and chaos profiles.
test-all: venv
	$(PY) -m pytest -n 2 --runslow $(PYTEST_ARGS)

## The long simulation: thousands of seeded fault schedules (SEEDS=1-2000 NODES=5 to change).
SEEDS ?= 1-1000
NODES ?= 5
STEPS ?= 20000
sim: venv
	$(PY) -m kvraft.testing.sim --seeds $(SEEDS) --nodes $(NODES) --steps $(STEPS) --jobs 2

lint: venv
	$(PY) -m pip install --quiet ruff
	$(VENV)/bin/ruff check kvraft tests twisted

## A local 3-node cluster under ./var/dev (Ctrl-C stops it).
dev: venv
	$(VENV)/bin/kvraft dev

clean:
	rm -rf $(VENV) build *.egg-info var .pytest_cache .hypothesis
