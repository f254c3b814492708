# Two commands on a fresh machine: `make run` (the whole pipeline) and `make test`.
# Then `make ui` (MLflow), `make dashboard` (Optuna) and `make serve` (the classifier).
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp
export DVC_NO_ANALYTICS = 1
# Recipes find the environment's commands (tubervae, dvc, mlflow, uvicorn) without activating it.
export PATH := $(abspath $(BIN)):$(PATH)
# `dvc exp run -S key=value ...` from a profile file's lines (comments and blank lines dropped).
profile_overrides = $$(sed -e 's/\#.*//' -e '/^\s*$$/d' -e 's/^/-S /' profiles/$(1).txt | tr '\n' ' ')
# More `-S key=value` overrides for the gpu-smoke targets, after the profile's (the last value of a key wins).
OVERRIDES     ?=
TRACKING_URI  = sqlite:///$(CURDIR)/mlflow.db
STUDIES_URI   = sqlite:///$(CURDIR)/optuna.db
UI_PORT        ?= 5000
UI_WORKERS     ?= 1
DASHBOARD_PORT ?= 8080
SERVE_PORT     ?= 5001
SERVE_MODEL    ?= models:/tuber-quality@champion
# The plots page's Vega, as dvc's page loads it from a CDN (dvc_render's versions), kept in .vega/ for offline use.
VEGA_DIR       = .vega
# make plots' page, apart from dvc_plots/ (what a plain `dvc plots show` writes, Vega from a CDN).
OFFLINE_PLOTS  = dvc_plots_offline
VEGA_PACKAGES  = vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
# pytest-xdist: one worker per core (one torch thread each, tests/conftest.py); `loadfile` keeps each test
# module on one worker, so its module fixtures (a tiny trained project, a `dvc repro`) are built once and its
# tests run in their order; tests/conftest.py hands out the longest files first. TEST_WORKERS=0: one process.
TEST_WORKERS   ?= auto
PYTEST_WORKERS  = -n $(TEST_WORKERS) --dist loadfile
# The suite keeps its compiled test modules (assertions rewritten, about 5 s a worker) and sources in
# __pycache__ even where the shell says not to write bytecode (PYTHONDONTWRITEBYTECODE).
PYTEST          = env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest

.PHONY: install run test test-fast lint plots thesis gpu-smoke gpu-smoke-cpu cpu-long disentangle bench ui dashboard serve

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: install          ## the whole pipeline on the default data (dvc repro)
	$(BIN)/dvc repro

test: install         ## lint, format check, import layers, then the test suite
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/lint-imports
	$(PYTEST) -q $(PYTEST_WORKERS) --durations=15

test-fast: install    ## the fast tier: every module's logic, without the tests marked slow
	$(PYTEST) -q $(PYTEST_WORKERS) -m "not slow" --durations=10

lint: install         ## fix what ruff can fix and format the tree
	$(BIN)/ruff check --fix src tests benchmarks experiments
	$(BIN)/ruff format src tests benchmarks experiments

thesis: install       ## the thesis's settings (64x64, 300000 steps, 5 seeds, every grid point): for a GPU
	$(BIN)/dvc exp run $(call profile_overrides,thesis)

gpu-smoke: install    ## every stage on a GPU at tiny steps (64x64, 300 steps, 2 seeds, 1 trial per family)
	$(BIN)/dvc exp run $(call profile_overrides,gpu-smoke) $(OVERRIDES)

gpu-smoke-cpu: install  ## the same run on the CPU at 32x32 (profiles/gpu-smoke-cpu.txt after gpu-smoke.txt)
	$(BIN)/dvc exp run $(call profile_overrides,gpu-smoke) $(call profile_overrides,gpu-smoke-cpu) $(OVERRIDES)

cpu-long: install     ## a longer CPU run for the grading job (8498 photos, 5 seeds, 30 models; under 2 h on 2 cores)
	$(BIN)/dvc exp run $(call profile_overrides,cpu-long)

disentangle: install  ## where the models disentangle: the geometry simulator, 5000 steps (docs/results/disentanglement-curve.md)
	$(BIN)/dvc exp run $(call profile_overrides,disentangle)

bench: install        ## speed figures (benchmarks/README.md)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

plots: install        ## dvc plots show into $(OFFLINE_PLOTS)/index.html, Vega from a local copy (npm registry, once)
	@mkdir -p $(VEGA_DIR)
	@cd $(VEGA_DIR) && for package in $(VEGA_PACKAGES); do \
	  name=$${package%@*}; version=$${package#*@}; \
	  test -s $$name.min.js || { npm pack --silent $$package >/dev/null && \
	    tar -xzf $$name-$$version.tgz --strip-components=2 package/build/$$name.min.js && rm $$name-$$version.tgz; } \
	  || exit 1; done
	@printf '%s\n' '<!DOCTYPE html>' '<html>' '<head>' '<meta charset="utf-8">' '<title>tubervae plots</title>' \
	  '<script src="../$(VEGA_DIR)/vega.min.js"></script>' '<script src="../$(VEGA_DIR)/vega-lite.min.js"></script>' \
	  '<script src="../$(VEGA_DIR)/vega-embed.min.js"></script>' '</head>' '<body>' '{plot_divs}' '</body>' '</html>' \
	  > $(VEGA_DIR)/template.html
	$(BIN)/dvc plots show --html-template $(VEGA_DIR)/template.html --out $(OFFLINE_PLOTS)

ui: install           ## MLflow's UI on the project's tracking store (http://127.0.0.1:$(UI_PORT))
	@# MLflow 3's UI opens on its GenAI view unless asked for model training: print the link that asks.
	@$(BIN)/python -c "from tubervae.runs.tracker import Tracker; \
	  print('training runs: http://127.0.0.1:$(UI_PORT)/#/experiments/' + Tracker('.').experiment_id + '?workflowType=machine_learning')"
	@# One worker and no GenAI job runner: one user's browser needs neither more processes nor their memory.
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri $(TRACKING_URI) \
	  --port $(UI_PORT) --workers $(UI_WORKERS)

dashboard: install    ## optuna-dashboard on the studies in optuna.db
	test -x $(BIN)/optuna-dashboard || $(BIN)/python -m pip install --quiet -e '.[dashboard]'
	$(BIN)/optuna-dashboard $(STUDIES_URI) --port $(DASHBOARD_PORT)

serve: install        ## serve the registered classifier (tuber-quality@champion) on port $(SERVE_PORT), its files checked first
	MLFLOW_TRACKING_URI=$(TRACKING_URI) $(BIN)/tubervae --root $(CURDIR) serve --model $(SERVE_MODEL) \
	    --host 127.0.0.1 --port $(SERVE_PORT)
