# Two commands do everything on a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := $(PY) -m pip
STAMP := .venv/.setup-stamp
# papermill/jupyter need the venv's bin first on PATH; figures vanish under MPLBACKEND=Agg.
export PATH := $(CURDIR)/.venv/bin:$(PATH)
unexport MPLBACKEND

.PHONY: setup book study nbval-refs html test test-fast

# Set-up is keyed on the files that define it: a second run costs seconds.
$(STAMP): requirements.txt pyproject.toml scripts/build_mmcv.sh scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

study: setup
	bash scripts/run_study.sh study

# CI-size reference copies for nbval (tests/nbval/); rows go to a temp folder.
nbval-refs: setup
	bash scripts/run_study.sh ci

html: setup
	bash scripts/vendor_mathjax.sh
	rm -rf _build/html  # no stale pages from an earlier build
	.venv/bin/jupyter-book build . -W -n --keep-going --builder html

book: study html

test: setup html
	bash scripts/install_chromium.sh
	$(PY) -m pytest -q -p no:cacheprovider tests
	bash scripts/nbval.sh

test-fast: setup
	$(PY) -m pytest -q -x tests -m "not slow"
