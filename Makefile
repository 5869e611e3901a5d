# benchkite developer entry points. `make help` lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

E2E_DIR ?= $(or $(BENCHKITE_E2E_DIR),target/e2e)
# The e2e tests mostly wait on the cluster, so they run a few at a time.
E2E_TEST_THREADS ?= 4
# Extra arguments of `cargo test -p benchkite-e2e` before `--`: a narrower run, e.g.
# E2E_TEST_ARGS='--test cluster' or E2E_TEST_ARGS='--test kerneljob some_test_name'.
E2E_TEST_ARGS ?=
# Cargo's target dir (CARGO_TARGET_DIR is honoured): the e2e tests run its debug binaries.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
BENCHKITE_DEBUG := $(TARGET_DIR)/debug/benchkite
# The cluster scripts and the e2e tests read the e2e dir from the environment.
E2E_ENV := BENCHKITE_E2E_DIR=$(E2E_DIR)
# Starts the e2e cluster unless a healthy one runs (e2e/cluster/ensure says which).
E2E_ENSURE := $(E2E_ENV) e2e/cluster/ensure
E2E_LEFT_RUNNING := echo "make: the e2e cluster is left running for fast reruns; stop it with 'make e2e-down'" >&2

.PHONY: help test build unit-test crds crds-check e2e-test e2e-up e2e-down demo lint

help:
	@echo "make test       unit tests, then e2e tests against the local cluster (started if none answers; left running)"
	@echo "make unit-test  unit tests only"
	@echo "make e2e-test   e2e tests only (starts the local cluster if none answers; E2E_TEST_ARGS narrows the run)"
	@echo "make test-chaos the chaos suite against the local cluster (started if none answers)"
	@echo "make e2e-up     build the cluster binaries (first time: long) and start the local cluster"
	@echo "make e2e-down   stop the local cluster and remove its state"
	@echo "make fleet-scale 150 GPU nodes, 20 SIGKILL restarts and a leader failover: 0 agents replaced (own cluster)"
	@echo "make fairshare-large fair queueing with 100 of A's jobs then B's 5 (make test runs 40)"
	@echo "make dra-gate-off the DRA suite on a cluster without DRAConsumableCapacity (as 1.34 ships; own cluster)"
	@echo "make demo       Buildkite simulator + operator, one KernelJob end to end, on the cluster KUBECONFIG points at, else its own (target/demo)"
	@echo "make demo-down  stop the demo and remove target/demo"
	@echo "make lint       rustfmt check and clippy with warnings as errors"
	@echo "make dashboards regenerate the chart's Grafana dashboards from e2e/monitoring/dashboards.yaml"
	@echo "make monitoring-check  dashboards validated and not drifted, promtool check and test of the alert rules"
	@echo "make fuzz-quick every fuzz target for 10 s (cargo-fuzz; make fuzz: 600 s each, FUZZ_SECONDS=N)"
	@echo "make crds       regenerate crds/ from the Rust types (CI fails when they drift)"
	@echo "make manifests  regenerate manifests/install.yaml and the chart's CRDs (CI fails when they drift)"

test: build crds-check manifests-check monitoring-check unit-test e2e-test

# The e2e tests run these binaries: the operator (also the job-side runner) and the simulator.
build:
	cargo build --workspace --bins

# The binary of the workspace build: `cargo run --bin` alone resolves features for
# one package and would build a second copy of the crate.
crds: build
	$(BENCHKITE_DEBUG) crds --dir crds
	e2e/chart/manifests

crds-check: build
	$(BENCHKITE_DEBUG) crds --dir crds --check

.PHONY: manifests manifests-check
# manifests/install.yaml and the chart's CRDs, rendered from charts/benchkite and crds/.
manifests:
	e2e/chart/manifests

manifests-check:
	e2e/chart/manifests --check

unit-test:
	cargo test --workspace --exclude benchkite-e2e

# The dashboards (charts/benchkite/files/dashboards/*.json) are generated from
# e2e/monitoring/dashboards.yaml and validated against the Grafana Foundation SDK's dashboard
# model (e2e/monitoring/dashboards, a Go tool); the alert rules (charts/benchkite/files/
# alerts.yaml) are checked and unit-tested by promtool (e2e/monitoring/alerts_test.yaml).
# prometheus and promtool are built from Go modules and cached like the cluster binaries.
DASHBOARDS_GO := cd e2e/monitoring/dashboards && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go
PROMETHEUS_DIR = $$(e2e/cluster/build-binaries --prometheus)
.PHONY: dashboards monitoring-check
dashboards:
	$(DASHBOARDS_GO) run . generate -spec ../dashboards.yaml -out ../../../charts/benchkite/files/dashboards

monitoring-check:
	$(DASHBOARDS_GO) test ./...
	$(DASHBOARDS_GO) run . generate -spec ../dashboards.yaml -out ../../../charts/benchkite/files/dashboards -check
	$(DASHBOARDS_GO) run . validate ../../../charts/benchkite/files/dashboards/*.json
	@prom=$(PROMETHEUS_DIR); \
	echo "$$prom/promtool check rules --lint=all --lint-fatal charts/benchkite/files/alerts.yaml"; \
	"$$prom/promtool" check rules --lint=all --lint-fatal charts/benchkite/files/alerts.yaml; \
	echo "$$prom/promtool test rules e2e/monitoring/alerts_test.yaml"; \
	"$$prom/promtool" test rules e2e/monitoring/alerts_test.yaml

# The cluster is started when none answers (e2e/cluster/ensure) and left running. The
# Buildkite simulator needs no start: the tests run it in their own process.
e2e-test:
	@$(E2E_ENSURE)
	@echo "cargo test -p benchkite-e2e $(E2E_TEST_ARGS) -- --test-threads=$(E2E_TEST_THREADS)"
	@status=0; \
	prom=$$(e2e/cluster/build-binaries --prometheus --cached || true); \
	$(E2E_ENV) BENCHKITE_BIN=$${BENCHKITE_BIN:-$(BENCHKITE_DEBUG)} BENCHKITE_PROMETHEUS_DIR=$${prom:-} \
	  cargo test -p benchkite-e2e $(E2E_TEST_ARGS) -- --test-threads=$(E2E_TEST_THREADS) || status=$$?; \
	$(E2E_LEFT_RUNNING); \
	exit $$status

# Fair queueing at the size the README reports: A queues 100 jobs, then B 5 (make test: 40).
FAIRSHARE_A ?= 100
.PHONY: fairshare-large
fairshare-large:
	@$(MAKE) --no-print-directory e2e-test E2E_TEST_ARGS="--test fairshare" E2E_ENV="$(E2E_ENV) BENCHKITE_E2E_FAIRSHARE_A=$(FAIRSHARE_A)"

# The chaos suite (e2e/tests/chaos.rs), one scenario at a time; BENCHKITE_CHAOS_LONG=1 for the
# long variants. The API server restart scenario refuses the default cluster (target/e2e)
# unless BENCHKITE_CHAOS_RESTART_APISERVER=1 (CI, which owns its cluster, sets it).
.PHONY: test-chaos
test-chaos:
	cargo build --bin benchkite
	@$(E2E_ENSURE)
	@echo "cargo test -p benchkite-e2e --test chaos -- --ignored --test-threads=1 --nocapture"
	@status=0; \
	$(E2E_ENV) BENCHKITE_BIN=$${BENCHKITE_BIN:-$(BENCHKITE_DEBUG)} \
	  cargo test -p benchkite-e2e --test chaos -- --ignored --test-threads=1 --nocapture || status=$$?; \
	$(E2E_LEFT_RUNNING); \
	exit $$status

# Issue 16's acceptance at full size: 150 GPU nodes (1,200 agents), 20 SIGKILL restarts and
# a leader failover (e2e/tests/fleet_scale.rs), on a cluster of its own (SCALE_E2E_DIR),
# then who removed agent pods, from the API server's audit log. FLEET_SCALE_NODES,
# FLEET_SCALE_RESTARTS override the sizes.
.PHONY: fleet-scale
SCALE_E2E_DIR ?= target/scale-e2e
FLEET_SCALE_NODES ?= 150
FLEET_SCALE_RESTARTS ?= 20
fleet-scale:
	cargo build --bin benchkite
	cargo test -p benchkite-e2e --test fleet_scale --no-run
	BENCHKITE_E2E_DIR=$(SCALE_E2E_DIR) BENCHKITE_E2E_CLUSTER=benchkite-scale e2e/cluster/up
	status=0; \
	BENCHKITE_E2E_DIR=$(SCALE_E2E_DIR) FLEET_SCALE_NODES=$(FLEET_SCALE_NODES) FLEET_SCALE_RESTARTS=$(FLEET_SCALE_RESTARTS) \
	  cargo test -p benchkite-e2e --test fleet_scale -- --ignored --nocapture || status=$$?; \
	BENCHKITE_E2E_DIR=$(SCALE_E2E_DIR) BENCHKITE_E2E_CLUSTER=benchkite-scale e2e/cluster/who-deleted; \
	BENCHKITE_E2E_DIR=$(SCALE_E2E_DIR) BENCHKITE_E2E_CLUSTER=benchkite-scale e2e/cluster/down; \
	exit $$status

# The DRA suite on a cluster of its own with DRAConsumableCapacity off (as Kubernetes 1.34
# ships it): CEL there has no device.allowMultipleAllocations, and benchkite's claim
# templates must select without it. make test runs the suite with the gate on (1.36).
DRA_GATE_OFF_DIR ?= target/dra-gate-off
.PHONY: dra-gate-off
dra-gate-off:
	cargo build --bin benchkite
	cargo test -p benchkite-e2e --test dra --no-run
	BENCHKITE_E2E_DIR=$(DRA_GATE_OFF_DIR) BENCHKITE_E2E_CLUSTER=benchkite-dra-off BENCHKITE_E2E_FEATURE_GATES=DRAConsumableCapacity=false e2e/cluster/up
	status=0; \
	BENCHKITE_E2E_DIR=$(DRA_GATE_OFF_DIR) cargo test -p benchkite-e2e --test dra || status=$$?; \
	BENCHKITE_E2E_DIR=$(DRA_GATE_OFF_DIR) BENCHKITE_E2E_CLUSTER=benchkite-dra-off e2e/cluster/down; \
	exit $$status

e2e-up:
	$(E2E_ENV) e2e/cluster/up

e2e-down:
	$(E2E_ENV) e2e/cluster/down

# The demo runs on the cluster KUBECONFIG points at (building no Kubernetes), else on its own
# cluster (target/demo), never the e2e one. See e2e/demo/README.md.
.PHONY: demo demo-down
demo:
	e2e/demo/up

demo-down:
	e2e/demo/down

# Benchmarks against same-run baselines (issue 8, bench/README.md): tables in
# bench/results/latest.md. `bench` (the full set, release binaries, ~40 min on 2 cores)
# runs on a cluster of its own, BENCH_E2E_DIR (default target/bench-e2e): created fresh,
# deleted afterwards (BENCH_KEEP=1 keeps it), so its last scenario leaves its 10,000
# KernelJobs and 8,000 pods to the teardown. `bench-quick` (CI, a few minutes) runs on the
# e2e cluster (started if none answers) and, by default, the debug binaries `make build` made
# (BENCH_QUICK_PROFILE=release for release ones); it removes what it adds.
BENCH_QUICK_PROFILE ?= debug
BENCH_E2E_DIR ?= target/bench-e2e
BENCH_KEEP ?=
BENCH_ARGS ?=
.PHONY: bench bench-quick
bench:
	cargo build --release -p benchkite --bins --example runner_overhead
	cargo build --release -p benchkite-bench
	BENCHKITE_E2E_DIR=$(BENCH_E2E_DIR) e2e/cluster/down
	BENCHKITE_E2E_DIR=$(BENCH_E2E_DIR) e2e/cluster/up
	status=0; \
	BENCHKITE_E2E_DIR=$(BENCH_E2E_DIR) BENCHKITE_BIN=$(CURDIR)/target/release/benchkite \
	  target/release/benchkite-bench $(if $(BENCH_KEEP),,--throwaway-cluster) $(BENCH_ARGS) || status=$$?; \
	if [[ -z "$(BENCH_KEEP)" ]]; then BENCHKITE_E2E_DIR=$(BENCH_E2E_DIR) e2e/cluster/down; fi; \
	exit $$status

bench-quick:
	@$(E2E_ENSURE)
	cargo build $(if $(filter release,$(BENCH_QUICK_PROFILE)),--release) -p benchkite --bins --example runner_overhead
	cargo build $(if $(filter release,$(BENCH_QUICK_PROFILE)),--release) -p benchkite-bench
	$(E2E_ENV) BENCHKITE_BIN=$(TARGET_DIR)/$(BENCH_QUICK_PROFILE)/benchkite \
	  $(TARGET_DIR)/$(BENCH_QUICK_PROFILE)/benchkite-bench --quick $(BENCH_ARGS)

# Fuzzing (cargo-fuzz; e2e/fuzz/README.md): every target for FUZZ_SECONDS each, one at a time.
.PHONY: fuzz fuzz-quick
FUZZ_SECONDS ?= 600
fuzz:
	e2e/fuzz/run $(FUZZ_SECONDS)

fuzz-quick:
	e2e/fuzz/run 10

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	images/agent/check.sh --self-test
