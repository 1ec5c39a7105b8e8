# fairnb: `make demo` runs the main job, `make test` runs every check. Both set up .venv when missing.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export FAIRNB_CACHE ?= $(CURDIR)/.cache/fairnb

.PHONY: demo test test-fast system export sync nbtest pytest pytest-fast bench clean

$(VENV)/.installed: setup.py settings.ini
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	mkdir -p reports
	$(BIN)/papermill nbs/run_chexpert.ipynb reports/chexpert_minmax.ipynb -p scheme minmax -p overwrite True
	@echo "report:  reports/chexpert_minmax.ipynb"
	@echo "results: reports/chexpert_minmax/results.json (config.json, history.csv and model.pt beside it)"

test: system sync nbtest pytest

# The edit loop: the sync check, every library notebook's tests, and the tests not marked slow (about 2 minutes).
test-fast: sync nbtest pytest-fast

# System packages from Debian's registry: headless Chromium, which the report tests open the HTML tables in.
system:
	@command -v chromium >/dev/null 2>&1 || { sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing chromium (Debian package) for the report tests"; \
	  $$sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium; }

# Regenerate fairnb/ from the notebooks and strip notebook noise; commit nbs/ and fairnb/ together.
export: $(VENV)/.installed
	$(BIN)/nbdev_clean && $(BIN)/nbdev_export

# Notebooks are the source: exporting and cleaning a copy must reproduce fairnb/ and nbs/ exactly.
sync: $(VENV)/.installed
	@tmp=$$(mktemp -d); cp -r settings.ini nbs $$tmp/; mkdir $$tmp/fairnb; cp fairnb/__init__.py fairnb/paper_tables.csv $$tmp/fairnb/; \
	(cd $$tmp && $(BIN)/nbdev_clean && $(BIN)/nbdev_export) >/dev/null; \
	diff -r -x __pycache__ fairnb $$tmp/fairnb && diff -r -x .ipynb_checkpoints -x reports nbs $$tmp/nbs; rc=$$?; rm -rf $$tmp; \
	if [ $$rc -ne 0 ]; then echo "nbs/ and fairnb/ are out of sync (or notebooks not clean): run 'make export' and commit both."; exit 1; fi; \
	echo "nbs/ and fairnb/ in sync"

nbtest: $(VENV)/.installed
	timeout 1200 $(BIN)/nbdev_test --n_workers 0 --skip_file_re '^(run_|tables|audit|findings)'

# Every test, on two workers of one thread each (one test file each at a time: a file's module fixtures are made
# once); the notebooks the tests execute inherit the one thread, so a run in a test and in a notebook compare exactly.
pytest: $(VENV)/.installed
	OMP_NUM_THREADS=1 timeout 3600 $(BIN)/pytest -q -n 2 --dist loadfile tests

pytest-fast: $(VENV)/.installed
	timeout 900 $(BIN)/pytest -q -m "not slow" tests

bench: $(VENV)/.installed
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_rank1.py
	$(BIN)/python bench/bench_auc.py
	$(BIN)/python bench/bench_loading.py
	$(BIN)/python bench/gpu.py --smoke

clean:
	rm -rf reports .cache .pytest_cache
