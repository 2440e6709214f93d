# Crypton: `make up` runs the exchange, `make test` runs lint and every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up test lint fmt bench venv clean unit kafka

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

test: $(STAMP) lint kafka
	$(PY) -m pytest -q

unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

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
