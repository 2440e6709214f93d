# Crypton: `make up` runs the exchange, `make test` runs lint and every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test lint fmt bench venv clean unit kafka mypyc unmypyc test-mypyc

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

up: $(STAMP) kafka
	$(VENV)/bin/crypton up

test: $(STAMP) lint kafka unmypyc
	$(PY) -m pytest -q

unit: $(STAMP) unmypyc
	$(PY) -m pytest -q -m "not integration"

# Optional: the hot modules of crypton/domain compiled with mypyc, in place (an extension
# module is imported before the .py beside it). Left as Python: messages.py and markets.py
# (msgspec's Struct metaclass rejects compiled classes), exchange.py (tests subclass
# Exchange; interpreted classes cannot inherit from compiled ones) and money.py (compiled,
# to_units would raise TypeError on a float before its own check gives the AmountError).
# `make test` removes the build and runs plain Python; `make test-mypyc` runs the domain and
# dataflow tests compiled (not the doctests: pytest cannot collect them from an extension).
# A build goes stale when its sources change: `make mypyc` again.
MYPYC_MODULES := $(addprefix crypton/domain/,book.py delivery.py idwindow.py markets.py matching.py money.py orders.py \
	sequencing.py wallet.py)

# One extension per module plus their shared library, named inside the package
# (crypton/domain/native__mypyc) so that it imports from any directory.
mypyc: $(STAMP)
	$(PY) -c "import sys; from setuptools import setup; from mypyc.build import mypycify; \
	setup(name='crypton-domain-native', script_args=['build_ext', '--inplace'], \
	ext_modules=mypycify(sys.argv[1:], group_name='crypton.domain.native'))" $(MYPYC_MODULES)

unmypyc:
	rm -rf build/ crypton/domain/*.so

test-mypyc: mypyc kafka
	$(PY) -m pytest -q tests/domain tests/dataflows

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
