# emostream: the two commands are `make demo` (the main job, on embedded local services) and
# `make test` (the whole suite). Both install what they need first, idempotently.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml deploy/local/system-packages.txt 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup demo test test-unit test-integration chaos lint services-up services-down schemas kubernetes clean

setup: $(STAMP)

$(STAMP): pyproject.toml deploy/local/system-packages.txt
	deploy/local/system.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	deploy/local/kafka.sh fetch
	deploy/kubernetes/kustomize.sh fetch
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/emostream demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(ARGS)

chaos: setup
	$(BIN)/emostream chaos --full $(ARGS)

lint: setup
	$(BIN)/ruff check streams engines chaos client tools tests
	$(BIN)/mypy

kubernetes:  ## render the Kubernetes deployment (OVERLAY=cpu): `make -s kubernetes | kubectl apply -f -`
	deploy/kubernetes/kustomize.sh build deploy/kubernetes/overlays/$(or $(OVERLAY),cpu)

schemas: setup
	$(BIN)/emostream schemas --out schemas

services-up: setup
	deploy/local/kafka.sh up && deploy/local/redis.sh up

services-down:
	deploy/local/kafka.sh down; deploy/local/redis.sh down

clean: services-down
	rm -rf .run
