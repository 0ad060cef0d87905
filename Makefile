# edgeship: the two commands of the README.
#   make demo   sets up a virtualenv and runs the whole pipeline on the embedded demo model
#   make test   sets up a virtualenv and runs the test suite
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.edgeship-installed
OUT    ?= edgeship-out

.PHONY: setup demo test typecheck bench clean help

help:
	@echo "make demo   - set up and run the pipeline on the embedded demo model (artifacts in $(OUT)/)"
	@echo "make test   - set up and run the tests"
	@echo "make typecheck - run mypy on the package (CI runs it before the tests)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "edgeship needs Python 3.11 (TensorFlow 2.21 stack); found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/edgeship run --out $(OUT)

test: setup
	$(PY) -m pytest

typecheck: setup
	$(VENV)/bin/mypy

clean:
	rm -rf $(OUT) .pytest_cache build *.egg-info
