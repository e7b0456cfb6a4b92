# driftline: `make run` runs the whole system, `make test` proves it. Nothing else is required.

# The first Python >= 3.11 on PATH.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && break; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test unit integration chaos test-browser lint layout bench bench-quick clean

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "driftline needs Python 3.11 or newer on PATH"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

## Run everything on this machine: broker, Redis, worker, API, simulated sensors.
run: $(STAMP)
	$(BIN)/driftline up

## The whole suite: unit tests, doctests, integration tests (they start the broker and Redis).
## Integration tests mostly wait on child processes: three at a time (pytest-xdist) take the
## suite from about 13 minutes to about 7 on two cores. TEST_WORKERS=0 runs them one by one.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not chaos and not browser"

integration: $(STAMP)
	$(BIN)/python -m pytest -m "integration and not chaos and not browser"

## The long fault-suite variants (`chaos` marker: kills, outages, poison at full size); not in `test`.
chaos: $(STAMP)
	$(BIN)/python -m pytest -m chaos

## The package as installed (models/, streams/, api/ under driftline/), as links, for the tools
## that read a tree from disk and know nothing of setuptools' package-dir mapping.
layout: $(STAMP)
	@$(BIN)/python .ci/layout.py build/layout

## ruff, the layers contract (import-linter), mypy strict. The layers are also checked by `make test`.
lint: layout
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd build/layout && PYTHONPATH=. ../../$(BIN)/lint-imports --no-cache ../../pyproject.toml
	cd build/layout && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p driftline

## The dashboard in a real browser (`browser` marker): Debian's chromium (CHROMIUM=/usr/bin/chromium),
## driven by Playwright; not in `test`, as a machine may have no browser. Screenshot: build/artifacts/.
CHROMIUM ?= /usr/bin/chromium
test-browser: $(STAMP)
	@test -x $(CHROMIUM) || { echo "make test-browser needs chromium at $(CHROMIUM) (Debian: apt-get install chromium)"; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,browser]'
	DRIFTLINE_CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest -m browser tests/browser

## The benchmark suite (bench/__main__.py): every module with a time budget, a py-spy profile of the
## worker, the report in bench/results/<date>.{md,json} and BENCHMARKS.md; under 15 minutes.
## bench-quick: the short version, no profile (bench/results/<date>-quick.*, BENCHMARKS.md untouched), under 3.
bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .driftline .pytest_cache .mypy_cache .ruff_cache *.egg-info build
