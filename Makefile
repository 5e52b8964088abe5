# Every target sets itself up: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test test-fast test-tools lint bench lab clean

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "notifier needs Python >= 3.10 (set PYTHON=python3.11)")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,postgres]'
	@touch $(STAMP)

setup: $(STAMP)

## make run: the demo jobs on the embedded default (mail goes to ./outbox)
run: setup
	$(VENV)/bin/notifier schedule jobs.yaml

## make test: lint + the whole test suite (what CI runs), in TEST_PROCESSES pytest processes
TEST_PROCESSES ?= 2
test: setup test-tools lint
	$(PY) -m pytest -q -n $(TEST_PROCESSES)

## make test-fast: the inner loop: lint + everything but the slow real-process tests
## (daemons killed and restarted, mail outages, two-node takeovers, PDF printing)
test-fast: setup lint
	$(PY) -m pytest -q -n $(TEST_PROCESSES) -m "not slow"

## The PDF tests print with Chromium and read the PDF back with poppler-utils; the dashboard's
## browser tests drive Chromium through chromium-driver (Selenium); the ledger and daemon tests
## also run on PostgreSQL (a throwaway cluster made with Debian's postgresql, or
## NOTIFIER_TEST_DATABASE_URL). As root with apt-get (Debian/Ubuntu) the missing ones are
## installed; otherwise those tests are skipped with a note (under CI=true they fail
## instead). Quiet when everything is there.
BROWSERS := chromium chromium-browser google-chrome google-chrome-stable chrome
test-tools:
	@missing=""; \
	command -v pdftotext >/dev/null 2>&1 && command -v pdfimages >/dev/null 2>&1 \
		|| missing="$$missing poppler-utils"; \
	found=""; for b in $$NOTIFIER_BROWSER $(BROWSERS); do \
		command -v $$b >/dev/null 2>&1 && found=$$b && break; done; \
	[ -n "$$found" ] || missing="$$missing chromium fonts-liberation"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	[ -n "$$NOTIFIER_TEST_DATABASE_URL" ] || command -v initdb >/dev/null 2>&1 \
		|| ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing with apt-get (for the PDF, browser and PostgreSQL tests)"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 \
			|| { apt-get update -qq >/dev/null 2>&1 \
				&& apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1; } \
			|| echo "note: could not install$$missing: the tests that need it will be skipped"; \
		else \
			echo "note:$$missing not installed (needs root and apt-get to install here):" \
				"the tests that need them will be skipped"; \
		fi; \
	fi

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
