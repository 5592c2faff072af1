# Two commands for a new machine (Python 3.10+, Java 17+):
#   make sample   set up, then run the backfill on the bundled sample (local Spark, --dry-run)
#   make test     set up, then run the test suite: on classic local Spark, then the end-to-end tests
#                 again as a Spark Connect client of a local server (a process holds one kind of session)
#   make dist     build the wheel and the zip for clusters (docs/platforms.md)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup sample test dist
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[local,test]'
	@# One sample run that leaves the classes local Spark loads in an archive, for faster starts (docs/performance.md)
	@# Quiet unless it fails: then its output says why.
	mkdir -p build
	$(BIN)/python -m mp_spark.class_archive --config conf/sample.yaml --dry-run --log-level WARN \
		--set job.results_path=$(CURDIR)/build/class-archive-run > build/class-archive.log 2>&1 \
		|| { cat build/class-archive.log; exit 1; }
	touch $@

sample: setup
	$(BIN)/mp-spark-backfill --config conf/sample.yaml --dry-run

# The classic suite in two processes, each with its own local Spark: its tests wait on JVMs, servers
# and subprocesses more than they compute, and take half the time. The Connect suite gains nothing.
test: setup
	$(BIN)/python -m pytest -n 2
	$(BIN)/python -m pytest --spark-connect

# dist/mp_spark-<version>-py3-none-any.whl for Databricks (or pip) and dist/mp_spark.zip for
# spark-submit --py-files, which takes .zip but not .whl: the zip is the wheel's mp_spark/, nothing else.
# build/ goes first because setuptools would otherwise put modules deleted since the last build in the wheel.
dist: setup
	rm -rf build dist
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	$(BIN)/python -m zipfile -e dist/mp_spark-*.whl build/wheel
	$(BIN)/python -m zipfile -c dist/mp_spark.zip build/wheel/mp_spark
