# Two commands do everything on a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
PY := .venv/bin/python
PIP := $(PY) -m pip
STAMP := .venv/.setup-stamp
# papermill/jupyter need the venv's bin first on PATH; figures vanish under MPLBACKEND=Agg.
export PATH := $(CURDIR)/.venv/bin:$(PATH)
unexport MPLBACKEND

.PHONY: setup book study nbval-refs html test test-fast weights

# SIZE=ci: a quick look (every chapter at CI size, a few minutes) into _build/quick/, apart from the study.
SIZE ?= study
CHAPTERS ?=
# DEVICE=cuda: every chapter on the GPU into its own run set (book/executed-cuda/); rows to the same CSVs.
DEVICE ?= cpu
# CHECKPOINT=... COCO=...: a real mmdet checkpoint and a COCO folder (annotations/, val2017/) for every chapter
# that takes them (the model page scores the checkpoint on COCO val2017).
CHECKPOINT ?=
COCO ?=
REAL := $(if $(CHECKPOINT),-p checkpoint $(abspath $(CHECKPOINT)))$(if $(COCO), -p coco $(abspath $(COCO)))
RUN := $(PY) scripts/run_study.py

# Set-up is keyed on the files that define it: a second run costs seconds.
$(STAMP): requirements.txt pyproject.toml scripts/build_mmcv.sh scripts/setup.sh scripts/setup_mmdeploy.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

study: setup
	$(RUN) study --device $(DEVICE)

# CI-size reference copies for nbval (tests/nbval/); rows go to a temp folder.
nbval-refs: setup
	$(RUN) ci

html: setup
	bash scripts/build_html.sh

# A failed chapter does not stop the others or the HTML (its page keeps the previous run and says what
# failed); `make book` still exits non-zero at the end. Ctrl-C stops at once and names the chapter.
ifeq ($(SIZE),ci)
book: setup
	@rc=0; $(RUN) quick $(CHAPTERS) --device $(DEVICE) $(REAL) || rc=$$?; [ $$rc -eq 130 ] && exit 130; bash scripts/build_html.sh quick || rc=1; exit $$rc
else ifeq ($(SIZE),study)
book: setup
	@rc=0; $(RUN) study $(CHAPTERS) --device $(DEVICE) $(REAL) || rc=$$?; [ $$rc -eq 130 ] && exit 130; bash scripts/build_html.sh || rc=1; exit $$rc
else
book:
	@echo "SIZE must be study (default) or ci, not '$(SIZE)'" >&2; exit 2
endif

# The trained weights (data/weights/): generate the shapes, train (resumes from its last save, outside the
# repository), re-estimate BatchNorm and write the safetensors file. Hours on 2 cores; make book never trains.
weights: setup
	$(PY) -m mmdet_speedup data train
	$(PY) -m mmdet_speedup train
	$(PY) -m mmdet_speedup export

test: setup html
	bash scripts/install_chromium.sh
	$(PY) -m pytest -q -p no:cacheprovider tests
	bash scripts/nbval.sh

test-fast: setup
	$(PY) -m pytest -q -x tests -m "not slow"
