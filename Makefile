# emostream: the two commands are `make demo` (the main job, on embedded local services) and
# `make test` (the whole suite). Both install what they need first, idempotently.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml deploy/local/system-packages.txt 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: setup demo test test-accuracy test-unit test-integration chaos bench lint services-up services-down schemas kubernetes gpu-check gpu-pack clean

setup: $(STAMP)

# (PYTHONWARNINGS: setuptools warns at every editable install that a folder named as a package may
# shadow it, in a box of asterisks: here the folders are the packages)
$(STAMP): pyproject.toml deploy/local/system-packages.txt
	deploy/local/system.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e ".[dev]"
	deploy/local/kafka.sh fetch
	deploy/kubernetes/kustomize.sh fetch
	rm -f $(VENV)/.installed-* && touch $@

demo: setup
	$(BIN)/emostream demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

# The trainings that hold the README's accuracy targets (IEMOCAP text, the composite's fusion
# margin, the contradicting-audio recipe): about 10-17 minutes on 2 cores, so not in `make test`.
test-accuracy: setup
	$(BIN)/python -m pytest -m accuracy tests/engine $(ARGS)

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(ARGS)

chaos: setup
	$(BIN)/emostream chaos --full $(ARGS)

# Throughput and latency of the whole pipeline on a broker and Redis of its own, beside a bare
# passthrough and a naive worker (tools/bench.py; about 20 minutes): README "Performance".
bench: setup
	$(BIN)/emostream bench --json runs/bench/bench.json --plot runs/bench/bench.png $(ARGS)

lint: setup
	$(BIN)/ruff check streams engines chaos client tools tests
	$(BIN)/mypy

kubernetes:  ## render the Kubernetes deployment (OVERLAY=cpu): `make -s kubernetes | kubectl apply -f -`
	deploy/kubernetes/kustomize.sh build deploy/kubernetes/overlays/$(or $(OVERLAY),cpu)

# The GPU runtime's parity and speed (engines/gpucheck.py): one run, under 8 minutes, on a CUDA
# machine where the project is installed: `make gpu-check OUT=dir`. On a bare GPU machine with
# torch and transformers but not this project's packages (the lent H200): `make gpu-pack` here,
# bring .gpu/ along, and run `python3 -m engines.gpucheck OUT --assets .gpu/minilm` there.
gpu-check: setup
	$(BIN)/python -m engines.gpucheck $(or $(OUT),gpu-check) $(ARGS)

gpu-pack: setup
	$(BIN)/python -m engines.gpucheck --pack .gpu/minilm

schemas: setup
	$(BIN)/emostream schemas --out schemas

# Kafka and Redis, and a Prometheus with the shipped alert rules scraping the worker(s) on 9108
# (WORKERS=N for `emostream worker --processes N`): http://127.0.0.1:9190/alerts
services-up: setup
	deploy/local/kafka.sh up && deploy/local/redis.sh up
	deploy/local/prometheus.sh up || echo "services-up: Kafka and Redis are up, Prometheus is not (said above)" >&2

services-down:
	deploy/local/prometheus.sh down; deploy/local/kafka.sh down; deploy/local/redis.sh down

clean: services-down
	rm -rf .run
