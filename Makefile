VENV := .venv
PYTHON := $(VENV)/bin/python
# The stamp is keyed on the dependency files, so a changed dependency reinstalls.
DEPS_HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

.PHONY: install test lint bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PYTHON) bench/proposals.py
	$(PYTHON) bench/conditional_sampling.py
	$(PYTHON) bench/pstep_loss.py
	$(PYTHON) bench/evaluate.py
