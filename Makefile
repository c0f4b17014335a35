# The two commands of the README: `make serve` and `make test`. Each creates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
UPLOAD_DIR ?= ./uploads
# The operators' live page; without authentication it answers loopback clients only.
STATUS_PATH ?= /bits-status/

.PHONY: serve test check lint typecheck pytest bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# `make serve` installs what serving needs; `make test` everything (which serving needs too).
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[serve]'
	touch $@

# Negotiate's GSSAPI is built against the system's Kerberos: with it where it is installed
# (Debian: libkrb5-dev); its tests skip, saying so, where it is not.
comma := ,
NEGOTIATE := $(if $(shell command -v krb5-config 2>/dev/null),$(comma)negotiate)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[serve,test,dev$(NEGOTIATE)]'
	touch $@ $(VENV)/.serve-installed

serve: $(VENV)/.serve-installed
	$(BIN)/bits-wsgi serve $(UPLOAD_DIR) --host $(HOST) --port $(PORT) --status-path $(STATUS_PATH)

lint: $(VENV)/.installed
	$(BIN)/ruff check bits_wsgi tests examples benchmarks
	$(BIN)/ruff format --check bits_wsgi tests examples benchmarks
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed
	$(BIN)/mypy

pytest: $(VENV)/.installed
	$(BIN)/pytest

check: lint typecheck

$(VENV)/.bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[serve,test,dev,bench]'
	touch $@

# Benchmarks: never part of `make test`; results and method in docs/benchmarks.md.
bench: $(VENV)/.bench
	$(BIN)/pytest benchmarks/test_micro.py --benchmark-only -p no:cacheprovider
	$(BIN)/python -m benchmarks.inprocess
	$(BIN)/python -m benchmarks.run --plot docs/benchmarks-fragment-size.png
	$(BIN)/python benchmarks/memory_flat.py

bench-quick: $(VENV)/.bench
	$(BIN)/pytest benchmarks/test_micro.py --benchmark-only -p no:cacheprovider
	$(BIN)/python -m benchmarks.inprocess --sessions 10000
	$(BIN)/python -m benchmarks.run --quick

test: check pytest

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
