#!/usr/bin/env bash
# Deploys flatnet onto kind cluster $CLUSTER: builds and loads the agent image,
# applies the CRDs and the agent's manifests, then waits until every node is
# Ready (the agent installed the CNI plugin there) and CoreDNS runs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
KUBECTL="$BIN_DIR/kubectl"
export KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"
MANIFESTS="$REPO_ROOT/dataplane/manifests"
TIMEOUT=${DEPLOY_TIMEOUT:-240s}

[ -x "$KUBECTL" ] || die "no $KUBECTL" "run 'make tools' first"
timeout 20 "$KUBECTL" get --raw /readyz >/dev/null 2>&1 ||
	die "cluster $CLUSTER does not answer (KUBECONFIG=$KUBECONFIG)" "create it with 'make cluster CLUSTER=$CLUSTER'"

# on_failure: what an operator needs to see when a wait times out.
on_failure() {
	warn "deploy did not finish; state of the cluster:"
	"$KUBECTL" get nodes -o wide >&2 || true
	"$KUBECTL" -n flatnet-system get pods -o wide >&2 || true
	"$KUBECTL" -n flatnet-system logs -l app.kubernetes.io/name=flatnet-agent --tail=20 --prefix >&2 || true
	"$KUBECTL" -n kube-system get pods -l k8s-app=kube-dns -o wide >&2 || true
}

IMAGE=$(bash "$REPO_ROOT/scripts/agent-image.sh" | tail -n 1)
[ -n "$IMAGE" ] || die "agent-image.sh printed no image ref"

step "deploy: CRDs"
"$KUBECTL" apply --server-side -f "$MANIFESTS/crds/" >&2
"$KUBECTL" wait --for=condition=Established --timeout=60s -f "$MANIFESTS/crds/" >&2

step "deploy: flatnet agent $IMAGE (subnet $NODE_SUBNET, gateway $NODE_GATEWAY, docker range $NODE_IP_RANGE)"
for f in "$MANIFESTS"/*.yaml; do
	sed -e "s|@IMAGE@|$IMAGE|g" -e "s|@NODE_SUBNET@|$NODE_SUBNET|g" \
		-e "s|@NODE_GATEWAY@|$NODE_GATEWAY|g" -e "s|@NODE_IP_RANGE@|$NODE_IP_RANGE|g" \
		-e "s|@SERVICE_SUBNET@|$SERVICE_SUBNET|g" "$f"
	echo "---"
done | "$KUBECTL" apply -f - >&2

step "deploy: waiting for the agent on every node"
if ! "$KUBECTL" -n flatnet-system rollout status ds/flatnet-agent --timeout="$TIMEOUT" >&2; then
	on_failure
	die "the flatnet agent did not become ready on every node within $TIMEOUT"
fi
step "deploy: waiting for every node to be Ready"
if ! "$KUBECTL" wait --for=condition=Ready nodes --all --timeout="$TIMEOUT" >&2; then
	on_failure
	die "not every node became Ready within $TIMEOUT"
fi
step "deploy: waiting for CoreDNS"
if ! "$KUBECTL" -n kube-system rollout status deploy/coredns --timeout="$TIMEOUT" >&2; then
	on_failure
	die "CoreDNS did not run within $TIMEOUT"
fi
"$KUBECTL" get ipblocks.flatnet.io >&2
info "flatnet deployed on cluster $CLUSTER"
