#!/usr/bin/env bash
# make bench-peers (nightly, not in CI): the same measurements as make bench on
# flatnet and on the real Cilium (cluster cilium-ref, scripts/cilium-cluster.sh)
# in one run, printed as one table of figure, flatnet, Cilium and their ratio
# (issue 19), also as JSON and a PNG of the ratios under _artifacts/bench-peers/.
# Both clusters are recovered or created first. As root, on the machine running kind.
#
#   make bench-peers [FLATNET_KUBECONFIG=...] [APPLIES=20] [BACKGROUND=1000] [PODS=30] [ROUNDS=2] [PERF=1]
#
# FLATNET_KUBECONFIG: the flatnet cluster to measure (default: cluster $CLUSTER,
# created with make cluster deploy when it does not answer; a given one is used
# as it is, never redeployed).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

out=$REPO_ROOT/_artifacts/bench-peers
mkdir -p "$out"
[ "$(id -u)" = 0 ] || die "bench-peers needs root: it reads the agents' cgroups and Hubble sockets under /proc"
load() { cut -d' ' -f1-3 /proc/loadavg; }
load_start=$(load)

# flatnet's cluster.
flatnet_cluster=$CLUSTER
if [ -n "${FLATNET_KUBECONFIG:-}" ]; then
	flatnet_cluster=$(KUBECONFIG=$FLATNET_KUBECONFIG "$BIN_DIR/kubectl" config current-context 2>/dev/null | sed 's/^kind-//')
	KUBECONFIG=$FLATNET_KUBECONFIG require_cluster "FLATNET_KUBECONFIG=$FLATNET_KUBECONFIG does not answer"
else
	FLATNET_KUBECONFIG=$OUT_DIR/$CLUSTER.kubeconfig
	if ! KUBECONFIG=$FLATNET_KUBECONFIG timeout 20 "$BIN_DIR/kubectl" get --raw /readyz >/dev/null 2>&1; then
		step "bench-peers: cluster $CLUSTER does not answer: make cluster deploy"
		make -C "$REPO_ROOT" --no-print-directory cluster deploy >&2
	fi
fi
flatnet_probe=$(CLUSTER=$flatnet_cluster bash "$REPO_ROOT/scripts/probe-image.sh" | tail -n 1)

# Cilium's: used as it is when its agents run, else created or recovered by
# make cilium-cluster (~15 s when stopped, ~3 min cached, ~25 min cold: its build
# cache key covers this repository's go.sum too).
cilium_kubeconfig=$OUT_DIR/cilium-ref.kubeconfig
if KUBECONFIG=$cilium_kubeconfig timeout 60 "$BIN_DIR/kubectl" -n kube-system rollout status ds/cilium --timeout=30s >/dev/null 2>&1; then
	info "bench-peers: cluster cilium-ref is up (its Cilium agents rolled out): used as it is"
	cilium_probe=$(CLUSTER=cilium-ref bash "$REPO_ROOT/scripts/probe-image.sh" | tail -n 1)
else
	step "bench-peers: cluster cilium-ref (make cilium-cluster)"
	eval "$(bash "$REPO_ROOT/scripts/cilium-cluster.sh" up | tail -n 2)"
	cilium_kubeconfig=$KUBECONFIG cilium_probe=$PROBE_IMAGE
fi

step "bench-peers: flatnet ($flatnet_cluster), load $(load)"
CLUSTER=$flatnet_cluster CNI=flatnet KUBECONFIG=$FLATNET_KUBECONFIG PROBE_IMAGE=$flatnet_probe \
	BENCH_NO_TABLE=1 BENCH_OUT=$out/flatnet bash "$REPO_ROOT/scripts/bench.sh"
step "bench-peers: cilium (cilium-ref), load $(load)"
CLUSTER=cilium-ref CNI=cilium KUBECONFIG=$cilium_kubeconfig PROBE_IMAGE=$cilium_probe \
	BENCH_NO_TABLE=1 BENCH_OUT=$out/cilium bash "$REPO_ROOT/scripts/bench.sh"

"$BIN_DIR/bench" table --json "$out/table.json" --png "$out/ratios.png" \
	--note "machine: $(nproc) CPUs, kernel $(uname -r); load at the start of the run $load_start, at the end $(load)" \
	--note "Cilium $CILIUM_VERSION built here (kube-proxy kept, native routing, cluster-pool IPAM, no L7 proxy): kind-configs/cilium-ref.values.yaml" \
	"$out/flatnet/result.json" "$out/cilium/result.json" | tee "$out/table.txt"
info "table, JSON, plot and each side's logs: $out"
