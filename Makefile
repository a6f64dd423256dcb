# Accrual: every task a developer or CI runs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
GENERATED := services/api/__init__.py
PROTOS := $(wildcard protos/accrual/v1/*.proto)

.PHONY: help install protos run browser test test-reliability test-all lint format bench clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(GENERATED): $(INSTALLED) $(PROTOS) protos/generate.py
	$(BIN)/python protos/generate.py

install: $(INSTALLED) $(GENERATED) ## Create .venv with the accrual command and generated protobuf code

protos: $(INSTALLED) ## Regenerate protobuf code from protos/ into services/api/
	$(BIN)/python protos/generate.py

run: install ## Serve gRPC on 127.0.0.1:50051 (embedded PostgreSQL unless ACCRUAL_DATABASE_URL is set)
	$(BIN)/accrual serve

lint: install ## ruff, mypy --strict and the import-direction contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache > /dev/null && echo "import contracts kept"

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

browser: ## Install Debian's chromium for the statement rendering test, if it is missing
	scripts/ensure-chromium

test: lint browser ## Lint, then every test that is not marked slow (real PostgreSQL, real gRPC)
	$(BIN)/pytest -m "not slow"

test-reliability: install ## Faults under load with the history checker, hostile input, and the soak
	$(BIN)/pytest -m reliability

test-all: lint browser ## Every test, slow suites included
	$(BIN)/pytest

bench: install ## Benchmarks on their own databases (knobs: README, Performance)
	$(BIN)/python tests/bench/bench_rebuild.py
	$(BIN)/python tests/bench/bench_ingest.py
	$(BIN)/python tests/bench/bench_ingest_cpu.py
	$(BIN)/python tests/bench/bench_entitlements.py
	$(BIN)/python tests/bench/bench_invoice.py

clean: ## Remove the virtualenv, generated code and caches (not .accrual/ data)
	rm -rf $(VENV) services/api .mypy_cache .ruff_cache .pytest_cache .hypothesis
