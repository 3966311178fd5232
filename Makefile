VENV := .venv
PYTHON := $(VENV)/bin/python
# The stamp is keyed on the dependency files, so a changed dependency reinstalls.
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

DEMO := .cache/demo
DEMO_MODEL := $(DEMO)/model.pt
# A cached demo model of an older bundle format is rebuilt: the stamp names the format.
BUNDLE_FORMAT := $(shell sed -n 's/^FORMAT_VERSION = //p' models/bundle.py)
DEMO_FORMAT_STAMP := $(DEMO)/.bundle-format-$(BUNDLE_FORMAT)

.PHONY: install test lint bench run demo-model test-integrations

# Label Studio and datumaro pin versions that conflict with ours (redis, numpy, pillow, opencv):
# each lives in its own environment, used by the integration tests as a separate program.
LS_VENV := .venv-ls
FORMATS_VENV := .venv-formats
LABEL_STUDIO_VERSION := 1.23.2
DATUMARO_VERSION := 1.13.12
# Their environments are frozen in their own constraints files; a changed file reinstalls.
LS_DEPS_HASH := $(LABEL_STUDIO_VERSION)-$(shell sha256sum constraints-label-studio.txt | cut -c1-16)
FORMATS_DEPS_HASH := $(DATUMARO_VERSION)-$(shell sha256sum constraints-datumaro.txt | cut -c1-16)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

# The demo model: a synthetic dataset and the tiny preset trained from image tags (a few
# minutes on two CPU cores, once; the bundle is cached in .cache/demo).
$(DEMO_FORMAT_STAMP):
	mkdir -p $(DEMO)
	rm -f $(DEMO)/.bundle-format-* $(DEMO_MODEL)
	touch $@

$(DEMO_MODEL): $(DEMO_FORMAT_STAMP) | $(STAMP)
	$(VENV)/bin/discoseg make-data $(DEMO)/data --n 120 --size 256 --seed 0
	$(VENV)/bin/discoseg train --data $(DEMO)/data/train.json --images $(DEMO)/data \
		--supervision tags --preset tiny --out $(DEMO_MODEL)

demo-model: $(DEMO_MODEL)

# Serves the API on http://127.0.0.1:8000 with batch jobs on the embedded backend.
run: $(DEMO_MODEL)
	$(VENV)/bin/discoseg serve --model $(DEMO_MODEL) --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest

$(LS_VENV)/.installed-$(LS_DEPS_HASH): constraints-label-studio.txt
	test -x $(LS_VENV)/bin/python || python3 -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet -c constraints-label-studio.txt \
		label-studio==$(LABEL_STUDIO_VERSION)
	touch $@

$(FORMATS_VENV)/.installed-$(FORMATS_DEPS_HASH): constraints-datumaro.txt
	test -x $(FORMATS_VENV)/bin/python || python3 -m venv $(FORMATS_VENV)
	$(FORMATS_VENV)/bin/python -m pip install --quiet -c constraints-datumaro.txt \
		datumaro==$(DATUMARO_VERSION)
	touch $@

# The end-to-end run with a real Label Studio server and the datumaro read-backs of the exports.
test-integrations: $(STAMP) $(LS_VENV)/.installed-$(LS_DEPS_HASH) $(FORMATS_VENV)/.installed-$(FORMATS_DEPS_HASH)
	$(VENV)/bin/pytest -m integration tests/service/test_labelstudio_server.py
	$(VENV)/bin/pytest tests/training/test_formats.py -k datumaro

bench: $(STAMP)
	$(PYTHON) bench/proposals.py
	$(PYTHON) bench/conditional_sampling.py
	$(PYTHON) bench/pstep_loss.py
	$(PYTHON) bench/evaluate.py
