# The two commands of the study: `make book` and `make test`.
# Both create .venv if it is missing and install requirements.txt into it.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
# CHAPTERS="07 08" runs only those chapters (by number), e.g. to resume after a failure;
# empty (the default) runs them all. A subset with chapter 08 first checks that the cache holds
# the variant files it times (or that the chapters named save them); MISSING_OK=1 skips that.
# chapter_numbers: "01 02 ..." of a list of notebooks.
CHAPTERS ?=
chapter_numbers = $(foreach nb,$(1),$(firstword $(subst _, ,$(notdir $(nb)))))
ifneq ($(strip $(CHAPTERS)),)
RUN_NOTEBOOKS := $(foreach c,$(CHAPTERS),$(or $(wildcard notebooks/$(c)_*.ipynb),$(error CHAPTERS: no notebook for chapter "$(c)" (expected two-digit chapter numbers such as 01 or 07, found: $(call chapter_numbers,$(NOTEBOOKS))))))
else
RUN_NOTEBOOKS := $(NOTEBOOKS)
endif
# The scripts the book's pages load, served from the book itself (see `web` below).
WEB := _build/web
WEB_STAMP := $(WEB)/.installed
# The embed bundle sometimes asks for its icon fonts relative to the page (book/@jupyter-widgets/)
# instead of beside itself: a copy there (html_extra_path) serves both requests.
WEB_EXTRA := _build/webextra
MATHJAX_VERSION := 3.2.2
REQUIREJS_VERSION := 2.3.8
HTML_MANAGER_VERSION := 1.0.15
export PATH := $(abspath $(BIN)):$(PATH)
# The chapters run with notebooks/ as their working directory: a relative QLIB_DATA folder
# (e.g. ../data/traffic-signs) is made absolute here; keywords (gtsrb, synthetic) pass as they are.
ifneq ($(strip $(QLIB_DATA)),)
ifneq ($(wildcard $(QLIB_DATA)),)
export QLIB_DATA := $(abspath $(QLIB_DATA))
endif
endif

.PHONY: book notebooks html web browser test unit nbval clean venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (qlib)" >/dev/null
	@touch $(STAMP)

# Execute every chapter (or those CHAPTERS names) with papermill into book/ (stops at the first
# failure, names it and how to resume),
# then build the HTML. Point it at the real data with QLIB_DATA=<folder of the YOLO export>.
book: notebooks html

notebooks: $(STAMP)
	@mkdir -p book/results
	@if [ -n "$(filter 08,$(CHAPTERS))" ] && [ -z "$(MISSING_OK)" ]; then \
	  $(BIN)/python -m qlib.bench --check "$(CHAPTERS)" || exit 1; fi
	@total=$$(date +%s); left="$(call chapter_numbers,$(RUN_NOTEBOOKS))"; \
	for nb in $(RUN_NOTEBOOKS); do \
	  out=book/$$(basename $$nb); start=$$(date +%s); \
	  echo "== running $$nb -> $$out"; \
	  if ! $(BIN)/papermill --progress-bar --cwd notebooks -k python3 $$nb $$out; then \
	    echo "!! make book stopped: $$nb failed (the failing cell is marked in $$out);" \
	         "once it is fixed, resume with: make book CHAPTERS=\"$$left\""; exit 1; fi; \
	  echo "== $$nb took $$(( $$(date +%s) - start )) s"; set -- $$left; shift; left="$$*"; \
	done; \
	echo "== all chapters took $$(( $$(date +%s) - total )) s"

html: $(STAMP) $(WEB_STAMP)
	$(BIN)/jupyter-book build --warningiserror --keep-going .
	@echo "The book is in _build/html/index.html"

# The scripts a page needs are served by the book itself, so that it renders offline:
# MathJax 3 (the math), RequireJS and the ipywidgets embed bundle (draws widgets from the state
# saved in the notebooks; html-manager 1.x reads the state of ipywidgets 8). They come from the
# npm registry as release tarballs (`npm pack`: their dist files are self-contained bundles, so
# their source dependencies are not needed) and are unpacked into $(WEB), which _config.yml
# lists in html_static_path: Sphinx copies it into _build/html/_static/.
web: $(WEB_STAMP)

$(WEB_STAMP): Makefile
	@command -v npm >/dev/null || $(call apt_install,npm,nodejs npm)
	@rm -rf $(WEB) $(WEB_EXTRA) _build/npm && mkdir -p $(WEB)/mathjax $(WEB)/widgets $(WEB_EXTRA)/book/@jupyter-widgets _build/npm
	cd _build/npm && npm pack --loglevel=error --pack-destination . mathjax@$(MATHJAX_VERSION) \
	  requirejs@$(REQUIREJS_VERSION) @jupyter-widgets/html-manager@$(HTML_MANAGER_VERSION) >/dev/null
	tar -xzf _build/npm/mathjax-$(MATHJAX_VERSION).tgz -C $(WEB)/mathjax --strip-components=2 package/es5
	tar -xzf _build/npm/requirejs-$(REQUIREJS_VERSION).tgz -C $(WEB)/widgets --strip-components=1 package/require.js
	tar -xzf _build/npm/jupyter-widgets-html-manager-$(HTML_MANAGER_VERSION).tgz -C $(WEB)/widgets \
	  --strip-components=2 --wildcards package/dist/embed-amd.js 'package/dist/*.woff*' \
	  'package/dist/*.ttf' 'package/dist/*.eot' 'package/dist/*.svg'
	cp $(WEB)/widgets/*.woff* $(WEB)/widgets/*.ttf $(WEB)/widgets/*.eot $(WEB)/widgets/*.svg $(WEB_EXTRA)/book/@jupyter-widgets/
	@printf '%s\n' "$$EMBED_SETUP_JS" > $(WEB)/widgets/embed-setup.js
	@rm -rf _build/npm && touch $(WEB_STAMP)

# Loaded on pages with widgets between require.js and embed-amd.js (see _config.yml).
define EMBED_SETUP_JS
// Written by `make web`: what the ipywidgets embed bundle needs in this book.
// 1. It loads its icon fonts from beside the AMD module
//    @jupyter-widgets/html-manager/dist/libembed-amd: map that module path to this folder.
require.config({paths: {"@jupyter-widgets/html-manager/dist":
  document.currentScript.src.replace(/\/[^/]*$$/, "")}});
// 2. ipywidgets 8 typesets widget descriptions with MathJax 2's MathJax.Hub.Queue; the book
//    loads MathJax 3 (deferred: it is there at DOMContentLoaded): route those calls to it.
document.addEventListener("DOMContentLoaded", function () {
  var MJ = window.MathJax;
  if (!MJ || !MJ.startup || MJ.Hub) return;
  MJ.Hub = {Queue: function () {
    var nodes = [].slice.call(arguments).map(function (job) { return job[2]; }).filter(Boolean);
    MJ.startup.promise = MJ.startup.promise.then(function () { return MJ.typesetPromise(nodes); });
  }};
});
endef
export EMBED_SETUP_JS

# apt_install(what, packages): install Debian packages when root (CI runs as root), else say so.
apt_install = { if [ "$$(id -u)" = 0 ]; then echo "== installing $(2) (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else echo "!! $(1) is missing and this is not root: install $(2)"; false; fi; }

# Headless Chromium and its driver for the book test (tests/test_book.py checks the built book
# as a reader's browser shows it). Where they cannot be installed, that test skips its checks.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $(call apt_install,chromium,chromium chromium-driver) || \
	  echo "!! chromium could not be installed: the browser checks of tests/test_book.py will skip"

test: unit nbval

# tests/ includes test_book.py: it builds the HTML of the published book (the chapters executed
# into book/) and checks it in headless Chromium (installed here by `browser` when missing). The
# chapters themselves are executed in smoke mode once, by nbval.
unit: $(STAMP) browser
	$(BIN)/python -m pytest -q tests

# Every chapter, top to bottom, in smoke mode (synthetic data, 32x32, one epoch).
nbval: $(STAMP)
	QLIB_SMOKE=1 QLIB_CACHE=$${QLIB_CACHE:-.cache/qlib-smoke} $(BIN)/python -m pytest -q --nbval-lax \
	  -p no:cacheprovider notebooks

clean:
	rm -rf _build .cache/qlib-smoke
