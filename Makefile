# The two commands of the study: `make book` and `make test`.
# Both create .venv if it is missing and install requirements.txt into it.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: book notebooks html test unit nbval clean venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (qlib)" >/dev/null
	@touch $(STAMP)

# Execute every chapter with papermill into book/ (stops at the first failure and names it),
# then build the HTML. Point it at the real data with QLIB_DATA=<folder of the YOLO export>.
book: notebooks html

notebooks: $(STAMP)
	@mkdir -p book/results
	@total=$$(date +%s); \
	for nb in $(NOTEBOOKS); do \
	  out=book/$$(basename $$nb); start=$$(date +%s); \
	  echo "== running $$nb -> $$out"; \
	  if ! $(BIN)/papermill --progress-bar --cwd notebooks -k python3 $$nb $$out; then \
	    echo "!! make book stopped: $$nb failed (the failing cell is marked in $$out)"; exit 1; fi; \
	  echo "== $$nb took $$(( $$(date +%s) - start )) s"; \
	done; \
	echo "== all chapters took $$(( $$(date +%s) - total )) s"

html: $(STAMP)
	$(BIN)/jupyter-book build --warningiserror --keep-going .
	@echo "The book is in _build/html/index.html"

test: unit nbval

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests

# Every chapter, top to bottom, in smoke mode (synthetic data, 32x32, one epoch).
nbval: $(STAMP)
	QLIB_SMOKE=1 QLIB_CACHE=$${QLIB_CACHE:-.cache/qlib-smoke} $(BIN)/python -m pytest -q --nbval-lax \
	  -p no:cacheprovider notebooks

clean:
	rm -rf _build .cache/qlib-smoke
