# benchkite developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

E2E_DIR ?= $(or $(BENCHKITE_E2E_DIR),target/e2e)
E2E_KUBECONFIG := $(if $(filter /%,$(E2E_DIR)),$(E2E_DIR),$(CURDIR)/$(E2E_DIR))/kubeconfig
# The e2e tests mostly wait on the cluster, so they run a few at a time.
E2E_TEST_THREADS ?= 4

.PHONY: help test build unit-test crds crds-check e2e-test e2e-up e2e-down demo lint

help:
	@echo "make test       unit tests, then e2e tests against the local cluster (needs make e2e-up)"
	@echo "make unit-test  unit tests only"
	@echo "make e2e-test   e2e tests only (needs make e2e-up)"
	@echo "make e2e-up     build the cluster binaries (first time: long) and start the local cluster"
	@echo "make e2e-down   stop the local cluster and remove its state"
	@echo "make demo       the demo"
	@echo "make lint       rustfmt check and clippy with warnings as errors"
	@echo "make crds       regenerate crds/ from the Rust types (CI fails when they drift)"

test: build crds-check unit-test e2e-test

# The e2e tests run these binaries: the operator (also the job-side runner) and the simulator.
build:
	cargo build --workspace --bins

crds:
	cargo run -q --bin benchkite -- crds --dir crds

crds-check:
	cargo run -q --bin benchkite -- crds --dir crds --check

unit-test:
	cargo test --workspace --exclude benchkite-e2e

e2e-test:
	@if [[ ! -s "$(E2E_KUBECONFIG)" ]]; then \
	  echo "make: no e2e cluster ($(E2E_KUBECONFIG) is missing); start it with 'make e2e-up' (or e2e/cluster/up), then rerun" >&2; \
	  exit 1; \
	fi
	cargo test -p benchkite-e2e -- --test-threads=$(E2E_TEST_THREADS)

e2e-up:
	e2e/cluster/up

e2e-down:
	e2e/cluster/down

demo:
	@echo "The benchkite demo is coming: it will start the local cluster with a GPU fleet,"
	@echo "the Buildkite simulator and the operator, and show one agent per GPU."

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
