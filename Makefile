# Two commands for a new machine (Python 3.10+, Java 17+):
#   make sample   set up, then run the backfill on the bundled sample (local Spark, --dry-run)
#   make test     set up, then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup sample test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test]'
	touch $@

sample: setup
	$(BIN)/mp-spark-backfill --config conf/sample.yaml --dry-run

test: setup
	$(BIN)/python -m pytest
