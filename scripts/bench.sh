#!/usr/bin/env bash
# make bench: flatnet measured on one cluster against its own baselines, every
# figure beside the same measurement without the CNI's share, taken in the same
# run, with the machine's load noted (issue 20). As root, on the machine running kind.
#   - pod start-up: a burst of 30 pause pods on the pod network vs the same burst
#     on hostNetwork; the kubelets' CRI histograms (RunPodSandbox holds the CNI ADD)
#     and flatnet's own CNI ADD histogram say where the time goes;
#   - agent CPU and memory at rest and under a NetworkPolicy churn (cgroups);
#   - flow events under a denied-SYN flood (Hubble ServerStatus, GetFlows);
#     (all three: suites/cmd/bench measure, suites/internal/bench)
#   - policy apply -> enforced p50/p99 with 1,000 NetworkPolicies present
#     (suites/netpol's enforcement benchmark, FLATNET_BENCH_BACKGROUND), and
#     ENFORCE_PODS more pods (FLATNET_BENCH_PODS; default none: the default
#     topology's nodes admit 30 pods each); on flatnet broken down per round
#     into the API call, the watch event and each node's policy map swap
#     (FLATNET_BENCH_TRACE);
#   - pod-to-pod TCP_RR/TCP_CRR on one node and across nodes with 0, 1,000 and
#     10,000 policies vs host->host (make perf: scripts/perf.sh; PERF=0 skips it);
#   - TCP_CRR/TCP_RR through the programs with 1,000 rules vs no program on netns
#     pods of this machine (scripts/bench-datapath.sh; DATAPATH=0 skips it).
# Nothing is asserted. Output: _artifacts/bench/<cluster>/ (result.json, table.txt,
# table.json, ratios.png, logs).
#
#   make bench [CLUSTER=flatnet] [KUBECONFIG=...] [CNI=flatnet|cilium] [APPLIES=20]
#              [BACKGROUND=1000] [ENFORCE_PODS=0] [PODS=30] [ROUNDS=2] [PERF=1] [PERF_POLICIES=0,1000,10000]
#              [DATAPATH=1] [MEASURE_ARGS=...] [PERF_ARGS=...]
# BENCH_NO_TABLE=1 BENCH_OUT=DIR: measure only (scripts/bench-peers.sh).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CNI=${CNI:-flatnet}
APPLIES=${APPLIES:-20}
BACKGROUND=${BACKGROUND:-1000}
ENFORCE_PODS=${ENFORCE_PODS:-0}
PODS=${PODS:-30}
ROUNDS=${ROUNDS:-2}
DATAPATH=${DATAPATH:-1}
PERF=${PERF:-1}
PERF_POLICIES=${PERF_POLICIES:-0,1000,10000}
export KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
out=${BENCH_OUT:-$REPO_ROOT/_artifacts/bench/$CLUSTER}

case "$CNI" in flatnet | cilium) ;; *) die "CNI=$CNI: unknown" "use CNI=flatnet or CNI=cilium" ;; esac
case "$APPLIES$BACKGROUND$ENFORCE_PODS$PODS$ROUNDS" in *[!0-9]*) die "APPLIES, BACKGROUND, ENFORCE_PODS, PODS and ROUNDS must be whole numbers" ;; esac
[ "$(id -u)" = 0 ] || die "bench needs root: it reads the agents' cgroups and Hubble sockets under /proc"
require_cluster "create it with 'make cluster deploy' (or give KUBECONFIG=)"
if [ -z "${PROBE_IMAGE:-}" ]; then
	PROBE_IMAGE=$(bash "$REPO_ROOT/scripts/probe-image.sh" | tail -n 1)
fi
export PROBE_IMAGE
mkdir -p "$out"
load() { cut -d' ' -f1-3 /proc/loadavg; }

step "bench: building suites/cmd/bench"
(cd "$REPO_ROOT" && run_logged "$out/build.log" nice -n 10 go build -o "$BIN_DIR/bench" ./suites/cmd/bench)

step "bench $CLUSTER ($CNI): start-up, agents, flood (load $(load))"
# shellcheck disable=SC2086 # MEASURE_ARGS are flags
"$BIN_DIR/bench" measure --cni "$CNI" --cluster "$CLUSTER" --pods "$PODS" --rounds "$ROUNDS" \
	--out "$out/result.json" ${MEASURE_ARGS:-} 2> >(tee "$out/measure.log" >&2)

step "bench $CLUSTER: policy apply -> enforced, $APPLIES rounds with $BACKGROUND policies and $ENFORCE_PODS more pods present (load $(load))"
# The breakdown reads flatnet's pinned maps in the kind nodes: flatnet only.
trace=0
[ "$CNI" = flatnet ] && trace=1
subnet=$("$BIN_DIR/kubectl" get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}' | awk -F. '{print $1"."$2".0.0/16"}')
# A failed benchmark is a finding (e.g. a policy never enforced): said under the
# table, and the other steps still run.
if (cd "$REPO_ROOT" && FLATNET_BENCH_APPLIES=$APPLIES FLATNET_BENCH_BACKGROUND=$BACKGROUND FLATNET_BENCH_PODS=$ENFORCE_PODS \
	FLATNET_BENCH_TRACE=$trace FLATNET_NODE_SUBNET=${FLATNET_NODE_SUBNET:-$subnet} \
	nice -n 10 "$BIN_DIR/ginkgo" --tags e2e --no-color --label-filter=bench --focus='apply to enforcement' --output-dir "$out" \
	--junit-report enforce-junit.xml ./suites/netpol >"$out/enforce.log" 2>&1); then
	"$BIN_DIR/bench" add-enforce "$out/result.json" "$out/enforce.log"
	# Where the time went (enforce_trace_test.go's tables, printed once each).
	awk '{t=$0; sub(/^ +/, "", t)} t ~ /ms after the instant before the API call:$/ {p = !seen[t]++} p && t == "" {p=0} p' "$out/enforce.log" >&2
else
	why=$(grep -m1 -A3 '\[FAILED\]' "$out/enforce.log" | grep -v '^\s*$' | tail -n +2 | tr -s ' \n' ' ' | cut -c1-300)
	warn "the enforcement benchmark failed on $CLUSTER: ${why:-see $out/enforce.log}"
	"$BIN_DIR/bench" not-measured "$out/result.json" "policy apply -> enforced with $BACKGROUND policies present" "${why:-the benchmark failed} (log: $out/enforce.log)"
fi

if [ "$PERF" = 1 ]; then
	step "bench $CLUSTER: make perf, pod-to-pod TCP_RR/TCP_CRR with $PERF_POLICIES policies vs host->host (load $(load))"
	if CLUSTER=$CLUSTER PERF_ARGS="--cluster $CLUSTER --out $out/perf --policies $PERF_POLICIES --tests TCP_RR,TCP_CRR --paths pod-pod-same-node,pod-pod-2-nodes,host-host ${PERF_ARGS:-}" \
		bash "$REPO_ROOT/scripts/perf.sh" >"$out/perf.log" 2>&1; then
		"$BIN_DIR/bench" add-perf "$out/result.json" "$out/perf/$CLUSTER/perf.json"
	else
		warn "make perf failed on $CLUSTER: see $out/perf.log"
		"$BIN_DIR/bench" not-measured "$out/result.json" "pod-to-pod TCP_RR/TCP_CRR (make perf)" "$(tail -n 1 "$out/perf.log" | cut -c1-300) (log: $out/perf.log)"
	fi
fi

if [ "$DATAPATH" = 1 ] && [ -z "${BENCH_NO_TABLE:-}" ]; then
	step "bench: datapath on netns pods of this machine (scripts/bench-datapath.sh, load $(load))"
	COUNT=${DATAPATH_COUNT:-3} bash "$REPO_ROOT/scripts/bench-datapath.sh" >"$out/datapath.log" 2>&1 ||
		{ tail -n 20 "$out/datapath.log" >&2; die "scripts/bench-datapath.sh failed" "full log: $out/datapath.log"; }
	"$BIN_DIR/bench" add-datapath "$out/result.json" "$OUT_DIR/bench-datapath/summary.txt"
fi

[ -n "${BENCH_NO_TABLE:-}" ] && exit 0
"$BIN_DIR/bench" table --json "$out/table.json" --png "$out/ratios.png" \
	--note "machine: $(nproc) CPUs, kernel $(uname -r); load now $(load)" "$out/result.json" | tee "$out/table.txt"
info "result, table, plot and logs: $out"
