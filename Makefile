# flatnet: two commands do everything on a fresh machine.
#   make e2e    engine + images + kind cluster + flatnet + every suite, with a report
#   make test   unit and real-kernel tests (netns, veth, BPF), as root
# Every pinned version is in versions.env; the node subnet in kind-configs/network.env.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# K8S_VERSION=vX.Y.Z: the Kubernetes release of the node image and cluster, any the Go
# module proxy serves (default: KUBERNETES_VERSION of versions.env). Another release
# gets a cluster of its own beside the default one: flatnet-vX-Y on node subnet
# 10.(192+Y).0.0/16 with API port 26411+Y and test world 10.(192+Y).255.0/24 (v1.36:
# 10.228.0.0/16, 26447), unless CLUSTER / NODE_SUBNET ... (kind-configs/network.env) are given.
DEFAULT_K8S_VERSION := $(shell sed -n 's/^KUBERNETES_VERSION=//p' versions.env)
K8S_VERSION ?= $(DEFAULT_K8S_VERSION)
ifneq ($(K8S_VERSION),$(DEFAULT_K8S_VERSION))
K8S_MINOR := $(shell echo '$(K8S_VERSION)' | sed -nE 's/^v1\.([0-9]+)\..*/\1/p')
ifneq ($(K8S_MINOR),)
CLUSTER         ?= flatnet-v1-$(K8S_MINOR)
NODE_SUBNET     ?= 10.$(shell echo $$((192 + $(K8S_MINOR)))).0.0/16
NODE_GATEWAY    ?= $(patsubst %.0.0/16,%.0.1,$(NODE_SUBNET))
NODE_IP_RANGE   ?= $(patsubst %.0.0/16,%.0.0/27,$(NODE_SUBNET))
API_SERVER_PORT ?= $(shell echo $$((26411 + $(K8S_MINOR))))
TEST_WORLD_CIDR ?= $(patsubst %.0.0/16,%.255.0/24,$(NODE_SUBNET))
export NODE_SUBNET NODE_GATEWAY NODE_IP_RANGE API_SERVER_PORT TEST_WORLD_CIDR
endif
# Refuse a release the proxy does not serve before any build or cluster work.
K8S_CHECK := bash scripts/node-image/release.sh check
else
K8S_CHECK := true
endif
export K8S_VERSION

CLUSTER ?= flatnet
CONFIG  ?= default
export CLUSTER CONFIG

BIN_DIR := $(CURDIR)/bin
OUT_DIR := $(CURDIR)/_output
KUBECONFIG_FILE := $(OUT_DIR)/$(CLUSTER).kubeconfig

GO_CMDS := $(wildcard dataplane/cmd/* probes/cmd/*)

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

.PHONY: build
build: tools ## build every flatnet binary and tool into bin/
	@mkdir -p $(BIN_DIR)
	@if [ -n "$(GO_CMDS)" ]; then CGO_ENABLED=0 go build -trimpath -o $(BIN_DIR)/ $(addprefix ./,$(GO_CMDS)); fi
	@ls $(BIN_DIR)

.PHONY: tools
tools: ## kind and ginkgo at the versions pinned in go.mod, kubectl at tools/go.mod's, hubble at tools/hubble/go.mod's
	@bash scripts/tools.sh

.PHONY: engine
engine: ## a Docker engine that can run privileged containers (starts one if needed)
	@bash scripts/docker-engine.sh

.PHONY: k8s-version
k8s-version: ## check K8S_VERSION is a release the Go module proxy serves (nothing to do for the default)
	@$(K8S_CHECK)

.PHONY: node-image
node-image: k8s-version engine ## the kind node image, built offline (K8S_VERSION=..., NODE_IMAGE=... skips)
	@bash scripts/node-image.sh >/dev/null

.PHONY: cluster
cluster: k8s-version tools ## create (or recover) kind cluster $(CLUSTER) with topology CONFIG=default|large|scale (K8S_VERSION=...)
	@bash scripts/cluster.sh up

.PHONY: cluster-down
cluster-down: ## delete cluster $(CLUSTER) and its docker network
	@bash scripts/test-world.sh down
	@bash scripts/cluster.sh down

.PHONY: test
test: ## unit and real-kernel tests (root: netns, veth, BPF)
	@bash scripts/test.sh

.PHONY: e2e
e2e: k8s-version ## setup + cluster + suites + report (FOCUS=, SKIP=, LIST=1, REUSE=1, E2E_CONCURRENCY=4, K8S_VERSION=...)
	@bash scripts/e2e.sh

.PHONY: sysdump
sysdump: tools ## every node's logs and every agent's state of cluster $(CLUSTER) in one tarball (DIR=_artifacts)
	@bash scripts/sysdump.sh $(or $(DIR),$(CURDIR)/_artifacts)

.PHONY: images
images: ## build the probe, agent and hubble-relay images and load them into cluster $(CLUSTER)
	@bash scripts/probe-image.sh >/dev/null
	@bash scripts/agent-image.sh >/dev/null
	@bash scripts/relay-image.sh >/dev/null

.PHONY: deploy
deploy: ## install flatnet (CRDs, agent DaemonSet) and wait for Ready nodes and CoreDNS
	@bash scripts/deploy.sh

.PHONY: test-world
test-world: tools ## the offline test world of cluster $(CLUSTER): servers at TEST_WORLD_CIDR on its node subnet (idempotent; TEST_WORLD=down removes them)
	@bash scripts/test-world.sh $(or $(TEST_WORLD),up)

.PHONY: hubble
hubble: tools ## port-forward hubble-relay to localhost:4245 for bin/hubble (HUBBLE_PORT=...), until Ctrl-C
	@bash scripts/hubble-port-forward.sh

.PHONY: observability
observability: tools ## Prometheus scraping every agent in namespace flatnet-observability (GRAFANA_IMAGE=... adds Grafana and the dashboard)
	@bash scripts/observability.sh

.PHONY: conformance
conformance: tools ## the policy suites against any cluster: KUBECONFIG=... PROBE_IMAGE=<probe image its nodes have>
	@[ -n "$${KUBECONFIG:-}" ] || { echo "conformance: set KUBECONFIG to the cluster to judge" >&2; exit 2; }
	@[ -n "$${PROBE_IMAGE:-}" ] || { echo "conformance: set PROBE_IMAGE (make images builds flatnet/probe; load it onto the cluster's nodes)" >&2; exit 2; }
	$(BIN_DIR)/ginkgo --tags e2e --keep-going --label-filter '!flatnet' --junit-report junit.xml \
		--output-dir $(CURDIR)/_artifacts/conformance ./suites/seed ./suites/netpol

.PHONY: perf
perf: ## netperf's tests on pod/host paths with 0 and 1,000 policies, vs host↔host (KUBECONFIG=, PROBE_IMAGE=, PERF_ARGS=) -> _artifacts/perf/<cluster>/
	@bash scripts/perf.sh

.PHONY: cilium-cluster
cilium-cluster: ## nightly, not in e2e: kind cluster cilium-ref running Cilium (CILIUM_VERSION) built here; ~25 min cold
	@bash scripts/cilium-cluster.sh up

.PHONY: cilium-cluster-down
cilium-cluster-down: ## delete cluster cilium-ref and its docker network
	@bash scripts/cilium-cluster.sh down

.PHONY: bench
bench: tools ## one cluster vs its baselines: start-up vs hostNetwork, CNI ADD, enforcement with 1,000 policies, agent usage, flood, netns TCP (root; CLUSTER=, CNI=)
	@bash scripts/bench.sh

.PHONY: bench-peers
bench-peers: tools ## nightly, not in CI: make bench's figures on flatnet and on Cilium (cilium-ref) in one run, one table + PNG in _artifacts/bench-peers
	@bash scripts/bench-peers.sh

.PHONY: k8s-conformance
k8s-conformance: tools ## Kubernetes' own [sig-network] [Conformance] e2e specs, offline (KUBECONFIG=, FOCUS=, SKIP=, NODES=)
	@bash scripts/k8s-conformance.sh
