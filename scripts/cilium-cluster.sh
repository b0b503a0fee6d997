#!/usr/bin/env bash
# make cilium-cluster: the reference peer. A second kind cluster, cilium-ref, beside
# flatnet's (same node image and Kubernetes, its own docker network, node subnet
# and API server port), running Cilium $CILIUM_VERSION built here from the Go module
# proxy (scripts/cilium-build.sh, scripts/cilium-image.sh), installed from the
# manifests its own chart renders with `helm template` (Helm built from the proxy
# too, tools/helm), with kind-configs/cilium-ref.values.yaml, after CNI's portmap
# plugin is put on every node (hostPort). Waits for every node Ready, every agent's
# `cilium-dbg status` OK and CoreDNS, loads the probe image and starts the test
# world (scripts/test-world.sh) so `make conformance` can judge it. Creates, keeps
# or recovers the cluster like make cluster does. Takes ~25 min cold (the Cilium
# build), ~3 min cached.
#
#   cilium-cluster.sh up     (the default) all of the above
#   cilium-cluster.sh down   remove cluster cilium-ref, its test world and its network
#
# Its address plan, each overridable: CILIUM_NODE_SUBNET (10.225.0.0/16),
# CILIUM_NODE_GATEWAY, CILIUM_NODE_IP_RANGE (what Docker hands the nodes),
# CILIUM_POD_POOL (Cilium's cluster-pool, inside the node subnet and outside the
# nodes' range: 10.225.128.0/17), CILIUM_API_SERVER_PORT (26444).
set -euo pipefail
# The plan goes in before lib.sh reads kind-configs/network.env, and wins over a
# CLUSTER or NODE_SUBNET of flatnet's own cluster in the environment (make exports
# CLUSTER).
export CLUSTER=${CILIUM_CLUSTER:-cilium-ref}
export NODE_SUBNET=${CILIUM_NODE_SUBNET:-10.225.0.0/16}
export NODE_GATEWAY=${CILIUM_NODE_GATEWAY:-10.225.0.1}
export NODE_IP_RANGE=${CILIUM_NODE_IP_RANGE:-10.225.0.0/27}
export TEST_WORLD_CIDR=${CILIUM_TEST_WORLD_CIDR:-10.225.127.0/24} # below POD_POOL: never a pod of Cilium either
export API_SERVER_PORT=${CILIUM_API_SERVER_PORT:-26444}
POD_POOL=${CILIUM_POD_POOL:-10.225.128.0/17}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBECTL="$BIN_DIR/kubectl"
export KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"
WORK="$OUT_DIR/$CLUSTER"
TIMEOUT=${CILIUM_TIMEOUT:-300}
NS=kube-system

if [ "${1:-up}" = down ]; then
	# The test world first: its containers hold the cluster's docker network.
	bash "$REPO_ROOT/scripts/test-world.sh" down
	exec bash "$REPO_ROOT/scripts/cluster.sh" down
fi
[ "${1:-up}" = up ] || die "usage: $0 [up|down]"
mkdir -p "$WORK"

# helm_bin: bin/helm from tools/helm, rebuilt only when that module changes.
helm_bin() {
	local key out="$BIN_DIR/helm"
	key=$(cat "$REPO_ROOT/tools/helm/go.mod" "$REPO_ROOT/tools/helm/go.sum" | sha256sum | cut -c1-16)-$(go env GOVERSION)
	if [ -x "$out" ] && [ "$(cat "$out.inputs" 2>/dev/null)" = "$key" ]; then
		info "helm: up to date ($("$out" version --short))"
		return
	fi
	step "helm: building helm.sh/helm/v4/cmd/helm (tools/helm)"
	(cd "$REPO_ROOT/tools/helm" && CGO_ENABLED=0 run_logged "$WORK/helm-build.log" \
		nice -n 10 go build -trimpath -ldflags "-s -w" -o "$out" helm.sh/helm/v4/cmd/helm)
	echo "$key" >"$out.inputs"
	info "helm: $("$out" version --short)"
}

# The cluster: scripts/cluster.sh with this plan (create, keep, or recover).
step "cluster $CLUSTER: node subnet $NODE_SUBNET, API server 127.0.0.1:$API_SERVER_PORT"
make -C "$REPO_ROOT" --no-print-directory tools >&2
bash "$REPO_ROOT/scripts/cluster.sh" up 2> >(grep -v 'NotReady until the flatnet CNI' >&2)

# The images, loaded into the cluster.
eval "$(bash "$REPO_ROOT/scripts/cilium-image.sh" | tail -n 2)"
[ -n "${AGENT_IMAGE:-}" ] && [ -n "${OPERATOR_IMAGE:-}" ] || die "cilium-image.sh printed no image refs"

# hostPort: with kube-proxy replacement off, Cilium implements it by chaining CNI's
# portmap plugin (cni.chainingMode in the values), which it does not ship: "you must
# install it into /opt/cni/bin/" of each node (its Documentation/installation/
# cni-chaining-portmap.rst), before the agents write a CNI config that names it.
TREE=$(bash "$REPO_ROOT/scripts/cilium-build.sh" | tail -n 1)
nodes=$("$BIN_DIR/kind" get nodes --name "$CLUSTER")
for node in $nodes; do
	docker cp "$TREE/node/." "$node:/" >/dev/null || die "cannot copy $TREE/node/ into node $node"
	docker exec -i -e CNI_COMMAND=VERSION "$node" /opt/cni/bin/portmap </dev/null >/dev/null ||
		die "the portmap CNI plugin does not run on node $node" "see $TREE/node/opt/cni/bin/portmap"
done
info "node plugins: $(cd "$TREE/node" && find . -type f | sed 's|^\.||' | tr '\n' ' ')on $(wc -w <<<"$nodes") nodes"

# The manifests: Cilium's chart from the module zip of the version built.
helm_bin
chart=$(cd "$REPO_ROOT/tools/cilium" && go list -m -f '{{.Dir}}' github.com/cilium/cilium)/install/kubernetes/cilium
[ -f "$chart/Chart.yaml" ] || die "no chart at $chart" "run 'cd tools/cilium && go mod download github.com/cilium/cilium'"
step "cilium: rendering $chart (helm template) and applying it"
"$BIN_DIR/helm" template cilium "$chart" --namespace "$NS" \
	--values "$REPO_ROOT/kind-configs/cilium-ref.values.yaml" \
	--set image.override="$AGENT_IMAGE" \
	--set operator.image.override="$OPERATOR_IMAGE" \
	--set ipam.operator.clusterPoolIPv4PodCIDRList="{$POD_POOL}" \
	--set ipv4NativeRoutingCIDR="$NODE_SUBNET" \
	>"$WORK/cilium.yaml" 2>"$WORK/helm.log" || { cat "$WORK/helm.log" >&2; die "helm template failed"; }
info "manifests: $WORK/cilium.yaml ($(grep -c '^kind:' "$WORK/cilium.yaml") objects)"
"$KUBECTL" apply --server-side --force-conflicts -f "$WORK/cilium.yaml" >"$WORK/apply.log" ||
	{ cat "$WORK/apply.log" >&2; die "kubectl apply of the Cilium manifests failed"; }

on_failure() {
	warn "state of cluster $CLUSTER:"
	"$KUBECTL" get nodes -o wide >&2 || true
	"$KUBECTL" -n "$NS" get pods -o wide >&2 || true
	"$KUBECTL" -n "$NS" logs -l k8s-app=cilium --tail=15 --prefix >&2 || true
}
# wait_for WHAT CHECK: polls CHECK (prints where it is, exits 0 when done) until TIMEOUT.
wait_for() {
	local what=$1 check=$2 deadline=$((SECONDS + TIMEOUT)) last=""
	while :; do
		last=$($check) && { info "$what: $last"; return 0; }
		[ $SECONDS -ge $deadline ] && { warn "$what: only $last after ${TIMEOUT}s"; on_failure; return 1; }
		sleep 3
	done
}
# agents_check: every node runs an agent pod whose `cilium-dbg status --brief`
# (asked live of the agent, never a stale API object) exits 0: kvstore, Kubernetes,
# the agent and cilium-health all healthy.
agents_check() {
	local nodes pods ok=0 p
	nodes=$("$KUBECTL" get nodes --no-headers 2>/dev/null | wc -l)
	pods=$("$KUBECTL" -n "$NS" get pods -l k8s-app=cilium -o jsonpath='{.items[*].metadata.name}' 2>/dev/null)
	for p in $pods; do
		timeout 40 "$KUBECTL" -n "$NS" exec "$p" -c cilium-agent -- cilium-dbg status --brief >/dev/null 2>&1 && ok=$((ok + 1))
	done
	echo "cilium-dbg status OK on $ok agents, $nodes nodes"
	[ "$nodes" -gt 0 ] && [ "$ok" -eq "$nodes" ]
}
nodes_check() {
	local want have
	want=$("$KUBECTL" get nodes --no-headers 2>/dev/null | wc -l)
	have=$("$KUBECTL" get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)
	echo "$have of $want nodes Ready"
	[ "$want" -gt 0 ] && [ "$have" -eq "$want" ]
}

step "cilium: waiting for the agents and the operator"
"$KUBECTL" -n "$NS" rollout status ds/cilium --timeout="${TIMEOUT}s" >&2 || { on_failure; die "the Cilium agents did not roll out"; }
"$KUBECTL" -n "$NS" rollout status deploy/cilium-operator --timeout="${TIMEOUT}s" >&2 || { on_failure; die "the Cilium operator did not roll out"; }
wait_for "agents" agents_check || die "cilium-dbg status is not OK on every agent"
wait_for "nodes" nodes_check || die "not every node became Ready"
# CoreDNS pods that started before the agents are restarted by the operator
# (operator.unmanagedPodWatcher), so this waits for the ones Cilium manages.
"$KUBECTL" -n "$NS" rollout status deploy/coredns --timeout="${TIMEOUT}s" >&2 || { on_failure; die "CoreDNS did not run"; }

# The probe image, so flatnet's suites can run here unchanged.
PROBE_IMAGE=$(CLUSTER=$CLUSTER bash "$REPO_ROOT/scripts/probe-image.sh" | tail -n 1)
# The offline world netpol's north-south family probes (outside client, world and
# CIDR servers), at TEST_WORLD_CIDR of this plan.
PROBE_IMAGE=$PROBE_IMAGE bash "$REPO_ROOT/scripts/test-world.sh" up
# Native routing needs "the network connecting the hosts ... capable of forwarding
# IP traffic using addresses given to pods" (Cilium's Documentation/network/
# concepts/routing.rst). autoDirectNodeRoutes gives the nodes each other's pod
# CIDRs; the test world's containers share their docker network with no router
# between, so they get each node's pod CIDRs via that node here, as an underlay
# router would have them (flatnet needs none: its pods are on the node subnet).
# A restarted world container loses them until this script runs again.
world=$(docker ps -q --filter "label=flatnet.test-world=$CLUSTER")
routes=0
while read -r node ip cidrs; do
	[ -n "$cidrs" ] || die "CiliumNode $node has no pod CIDR yet"
	for c in $world; do
		for cidr in $cidrs; do
			nsenter -t "$(docker inspect -f '{{.State.Pid}}' "$c")" -n ip route replace "$cidr" via "$ip" ||
				die "cannot route $cidr via $node ($ip) in test world container $c"
			routes=$((routes + 1))
		done
	done
done < <("$KUBECTL" get ciliumnodes -o jsonpath='{range .items[*]}{.metadata.name} {.spec.addresses[?(@.type=="InternalIP")].ip} {.spec.ipam.podCIDRs[*]}{"\n"}{end}')
info "test world: $routes routes to the nodes' pod CIDRs in $(wc -w <<<"$world") containers"

"$KUBECTL" get nodes -o wide >&2
cat >&2 <<MSG

  cluster $CLUSTER runs Cilium $CILIUM_VERSION (node subnet $NODE_SUBNET, pods from $POD_POOL)
    export KUBECONFIG=$KUBECONFIG
    $KUBECTL -n $NS exec ds/cilium -c cilium-agent -- cilium-dbg status
    make conformance KUBECONFIG=$KUBECONFIG PROBE_IMAGE=$PROBE_IMAGE
MSG
echo "KUBECONFIG=$KUBECONFIG"
echo "PROBE_IMAGE=$PROBE_IMAGE"
