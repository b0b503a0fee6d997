#!/usr/bin/env bash
# Cluster lifecycle on kind's own API: internal/cmd/flatnet-cluster (package
# internal/kindcluster) does the work; this script keeps what is host work (the
# iptables package, the Docker engine) and builds the command.
#
#   cluster.sh up        create cluster $CLUSTER (topology $CONFIG) on its own docker
#                        network, or do nothing if it is healthy, or recover/recreate it
#   cluster.sh down      remove the cluster and its network, nothing else
#   cluster.sh status    exit 0 when the cluster answers
#   cluster.sh nodes     the cluster's node containers, one a line
#   cluster.sh logs DIR  every node's logs under DIR (as `kind export logs`)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
CONFIG=${CONFIG:-default}
KUBECTL="$BIN_DIR/kubectl"
KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"

# flatnet_cluster ARGS...: the command, rebuilt only when its sources changed.
flatnet_cluster() {
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/flatnet-cluster.build.log" \
		gobuild build -trimpath -o "$BIN_DIR/flatnet-cluster" ./internal/cmd/flatnet-cluster)
	"$BIN_DIR/flatnet-cluster" -name "$CLUSTER" -config "$CONFIG" -repo "$REPO_ROOT" -out "$OUT_DIR" -since "$_t0" "$@"
}

usage() {
	"$KUBECTL" --kubeconfig "$KUBECONFIG" get nodes -o wide >&2 || true
	cat >&2 <<MSG

  cluster $CLUSTER is up (node subnet $NODE_SUBNET on docker network $CLUSTER-net)
    export KUBECONFIG=$KUBECONFIG
    $KUBECTL get nodes
  Nodes are NotReady until the flatnet CNI is deployed (make deploy).
MSG
}

case "${1:-}" in
up)
	command -v iptables >/dev/null || apt_install iptables
	bash "$REPO_ROOT/scripts/docker-engine.sh"
	[ -x "$KUBECTL" ] || die "bin/kubectl is missing" "run 'make tools' (make cluster does it)"
	flatnet_cluster up || exit 1
	usage
	;;
down | status | nodes) flatnet_cluster "$1" ;;
logs) flatnet_cluster logs "${2:?usage: $0 logs DIR}" ;;
*) die "usage: $0 up|down|status|nodes|logs DIR" ;;
esac
