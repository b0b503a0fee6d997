#!/usr/bin/env bash
# `make perf`: netperf's TCP_RR, TCP_CRR, TCP_STREAM and UDP_RR (`probe perf`) on the
# cluster of KUBECONFIG (default: kind cluster $CLUSTER, flatnet) between pods on one
# node, on two nodes, pod → host, host → pod and host → host (the baseline), with 0
# and 1,000 NetworkPolicies selecting the servers, in a namespace of its own (deleted
# after). Prints one table and writes _artifacts/perf/<cluster>/{table.txt,perf.json,perf.png};
# perf.json (perfdash format) is what `make bench-peers` reads (suites/README.md).
#
#   PROBE_IMAGE  the probe image the nodes have; unset: built from this tree by
#                scripts/probe-image.sh and loaded into the kind cluster named by
#                the kubeconfig's current context (kind-<name>)
#   PERF_ARGS    more flags of suites/cmd/perf, e.g. "--policies 0,1000,10000 --duration 5s"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
export KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
require_cluster "create it with 'make cluster deploy', or set KUBECONFIG to the cluster to measure"

context=$("$BIN_DIR/kubectl" config current-context)
name=${context#kind-}
if [ -z "${PROBE_IMAGE:-}" ]; then
	step "probe image (loaded into kind cluster $name)"
	PROBE_IMAGE=$(CLUSTER=$name bash "$REPO_ROOT/scripts/probe-image.sh" | tail -n1)
fi
info "PROBE_IMAGE=$PROBE_IMAGE"

step "perf driver"
(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/logs/perf-build.log" go build -trimpath -o "$BIN_DIR/perf" ./suites/cmd/perf)

step "measuring $name (context $context)"
# shellcheck disable=SC2086 # PERF_ARGS is a list of flags
"$BIN_DIR/perf" --kubeconfig "$KUBECONFIG" --image "$PROBE_IMAGE" --out "$REPO_ROOT/_artifacts/perf" ${PERF_ARGS:-}
