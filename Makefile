# Every target sets itself up: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test lint bench lab clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "notifier needs Python >= 3.10 (set PYTHON=python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)

## make run: the demo jobs on the embedded default (mail goes to ./outbox)
run: setup
	$(VENV)/bin/notifier schedule jobs.yaml

## make test: lint + the whole test suite
test: setup lint
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check notifier tests benchmarks
	$(VENV)/bin/ruff format --check notifier tests benchmarks

## make bench: side-by-side benchmarks (prints ratios)
bench: setup
	$(PY) benchmarks/run_all.py

## make lab: JupyterLab on the notebooks, with this project's environment
## (extra options: make lab LAB_ARGS=--no-browser; as root --allow-root is added)
LAB_ARGS ?=
lab: setup
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

clean:
	rm -rf $(VENV) outbox runs notifier.db notifier.db-wal notifier.db-shm .notifier-state *.egg-info .pytest_cache .ruff_cache
