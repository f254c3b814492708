# Two commands on a fresh machine: `make run` (the whole pipeline) and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export DVC_NO_ANALYTICS = 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run test lint thesis bench clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install          ## the whole pipeline on the default data (dvc repro)
	$(BIN)/dvc repro

test: install         ## lint, format check, import layers, then the test suite
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install         ## fix what ruff can fix and format the tree
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

thesis: install       ## the thesis's settings (64x64, 300000 steps, 5 seeds, every grid point): for a GPU
	$(BIN)/dvc exp run $$(sed -e 's/#.*//' -e '/^\s*$$/d' -e 's/^/-S /' profiles/thesis.txt | tr '\n' ' ')

bench: install        ## speed figures (benchmarks/README.md)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done
