#!/usr/bin/env bash
# Usage: sysdump.sh DIR
# A sysdump of cluster $CLUSTER (as `cilium sysdump`): what a failed run needs to
# be understood later, as one tarball DIR/sysdump-<cluster>-<time>.tar.gz:
#   nodes/        every node's logs (journal, containerd, kubelet, pod logs: kind export logs)
#   cluster/      pods, events, nodes, policies (NetworkPolicy, CNP, CCNP), IPBlocks
#   agents/       every agent's state: flatnetctl flows, usage and rejected (through the
#                 API server's pods/portforward) and each agent's /metrics (datapath
#                 counters, BPF map fill), read through the API server's pod proxy
#   hubble/       the relay's ServerStatus and nodes (upstream hubble CLI, port-forward)
# A part that cannot be collected leaves its error in its file; the rest goes on.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 1 ] || die "usage: sysdump.sh DIR"
CLUSTER=${CLUSTER:-flatnet}
export KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
KUBECTL="$BIN_DIR/kubectl"
name="sysdump-$CLUSTER-$(date -u +%Y%m%dT%H%M%SZ)"
dump="$1/$name"
mkdir -p "$dump"/{nodes,cluster,agents,hubble}
step "sysdump of cluster $CLUSTER -> $1/$name.tar.gz"

# get FILE CMD...: CMD's output (and errors) in FILE, never failing the dump.
get() {
	local file=$1
	shift
	timeout 60 "$@" >"$dump/$file" 2>&1 || echo "(exit $?: $*)" >>"$dump/$file"
}

bash "$REPO_ROOT/scripts/cluster.sh" logs "$dump/nodes" >"$dump/nodes/export.log" 2>&1 || true
get cluster/pods.txt "$KUBECTL" get pods -A -o wide
get cluster/events.txt "$KUBECTL" get events -A --sort-by=.lastTimestamp
get cluster/nodes.yaml "$KUBECTL" get nodes -o yaml
get cluster/namespaces.txt "$KUBECTL" get namespaces --show-labels
get cluster/policies.yaml "$KUBECTL" get networkpolicies.networking.k8s.io,ciliumnetworkpolicies.cilium.io,ciliumclusterwidenetworkpolicies.cilium.io -A -o yaml
get cluster/ipblocks.yaml "$KUBECTL" get ipblocks.flatnet.io -o yaml
get cluster/flatnet-system.txt "$KUBECTL" -n flatnet-system get all -o wide

ctl=${FLATNETCTL:-$BIN_DIR/flatnetctl}
if [ ! -x "$ctl" ]; then
	(cd "$REPO_ROOT" && CGO_ENABLED=0 go build -trimpath -o "$ctl" ./dataplane/cmd/flatnetctl) >"$dump/agents/build.log" 2>&1 || true
fi
get agents/flows.json "$ctl" flows -o json
get agents/usage.json "$ctl" usage -o json --subnet "$NODE_SUBNET" --gateway "$NODE_GATEWAY"
get agents/rejected.txt "$ctl" rejected
for pod in $("$KUBECTL" -n flatnet-system get pods -l app.kubernetes.io/name=flatnet-agent -o jsonpath='{range .items[*]}{.metadata.name}{" "}{end}' 2>/dev/null); do
	get "agents/$pod.metrics" "$KUBECTL" get --raw "/api/v1/namespaces/flatnet-system/pods/$pod:9969/proxy/metrics"
done

# The relay's ServerStatus, through a port-forward of its Service (as make hubble).
pf_log="$dump/hubble/port-forward.log"
"$KUBECTL" -n flatnet-system port-forward --address 127.0.0.1 service/hubble-relay :80 >"$pf_log" 2>&1 &
pf=$!
port=""
for _ in $(seq 20); do
	port=$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$pf_log" | head -n 1)
	[ -n "$port" ] && break
	sleep 0.5
done
if [ -n "$port" ]; then
	get hubble/status.txt "$BIN_DIR/hubble" status --server "localhost:$port"
	get hubble/nodes.txt "$BIN_DIR/hubble" list nodes --server "localhost:$port"
else
	echo "no port-forward to service/hubble-relay (log: port-forward.log)" >"$dump/hubble/status.txt"
fi
kill "$pf" 2>/dev/null || true
wait "$pf" 2>/dev/null || true

tar -C "$1" -czf "$1/$name.tar.gz" "$name" 2>"$1/$name.tar.log" || warn "tar: $(tail -n 1 "$1/$name.tar.log")"
[ -s "$1/$name.tar.gz" ] && rm -rf "$dump" "$1/$name.tar.log"
info "sysdump: $1/$name.tar.gz ($(du -h "$1/$name.tar.gz" | cut -f1))"
