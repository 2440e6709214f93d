# Crypton: `make up` runs the exchange, `make test` runs lint and every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test lint fmt bench venv clean unit kafka mypyc unmypyc test-plain test-mypyc

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

# Apache Kafka's jars, fetched once with Maven into ~/.cache/crypton (needs java 17+ and mvn;
# CRYPTON_BROKER=tansu runs without Java and skips this).
kafka: $(STAMP)
	@if [ "$${CRYPTON_BROKER:-kafka}" = kafka ] && [ -z "$${CRYPTON_KAFKA_BOOTSTRAP:-}" ]; then \
		$(VENV)/bin/crypton broker --fetch; fi

up: $(STAMP) kafka mypyc
	$(VENV)/bin/crypton up

# Every test on plain Python, then the domain and the dataflow's fast tests on the
# compiled core (what `make up` runs).
test: $(STAMP) lint kafka
	$(MAKE) --no-print-directory test-plain
	$(MAKE) --no-print-directory test-mypyc

test-plain: $(STAMP) kafka unmypyc
	$(PY) -m pytest -q

unit: $(STAMP) unmypyc
	$(PY) -m pytest -q -m "not integration"

# The hot modules of crypton/domain compiled with mypyc, in place (an extension module is
# imported before the .py beside it): `make up` runs the exchange on them. Left as Python:
# messages.py (msgspec's Struct metaclass rejects compiled classes) and exchange.py (tests
# subclass Exchange; interpreted classes cannot inherit from compiled ones). Rebuilt when a
# source changes; crypton/domain/__init__.py refuses a build older than its sources.
# `make test-plain` removes the build and runs every test on plain Python; `make
# test-mypyc` runs the domain tests and the dataflow's fast ones compiled (not the
# doctests: pytest cannot collect them from an extension).
MYPYC_MODULES := $(addprefix crypton/domain/,book.py delivery.py idwindow.py markets.py matching.py money.py orders.py \
	sequencing.py wallet.py)

# One extension per module plus their shared library, named inside the package
# (crypton/domain/native__mypyc) so that it imports from any directory.
NATIVE := crypton/domain/native__mypyc.built

$(NATIVE): $(STAMP) $(MYPYC_MODULES)
	@echo "compiling the core with mypyc (about a minute)"
	@$(PY) -c "import sys; from setuptools import setup; from mypyc.build import mypycify; \
	setup(name='crypton-domain-native', script_args=['build_ext', '--inplace'], \
	ext_modules=mypycify(sys.argv[1:], group_name='crypton.domain.native'))" $(MYPYC_MODULES) \
	> build-mypyc.log 2>&1 || { tail -20 build-mypyc.log; exit 1; }
	@# setuptools copies a module's unchanged shim with its old time: mark the whole build new
	@touch crypton/domain/*.so $@

mypyc: $(NATIVE)

unmypyc:
	rm -rf build/ build-mypyc.log crypton/domain/*.so $(NATIVE)

test-mypyc: mypyc kafka
	$(PY) -m pytest -q -m "not slow" tests/domain tests/dataflows

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) kafka
	$(PY) -m loadtest.bench_core
	$(PY) -m loadtest.bench_pipeline --broker kafka

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
