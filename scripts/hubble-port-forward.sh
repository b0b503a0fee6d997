#!/usr/bin/env bash
# `make hubble`: the upstream hubble CLI (bin/hubble) against cluster $CLUSTER's
# hubble-relay, as `cilium hubble port-forward` gives it: a port-forward of
# Service flatnet-system/hubble-relay (port 80, the relay's plaintext 4245) to
# localhost:4245, the CLI's default server. Runs in the foreground until
# interrupted (Ctrl-C); HUBBLE_PORT=... picks another local port.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
KUBECTL="$BIN_DIR/kubectl"
export KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
PORT=${HUBBLE_PORT:-4245}
NS=flatnet-system

require_cluster "create it with 'make cluster deploy'"
[ -x "$BIN_DIR/hubble" ] || die "no $BIN_DIR/hubble" "run 'make tools' first"
"$KUBECTL" -n "$NS" get service hubble-relay >/dev/null 2>&1 ||
	die "cluster $CLUSTER has no Service $NS/hubble-relay" "run 'make deploy' first"
if ! "$KUBECTL" -n "$NS" rollout status deploy/hubble-relay --timeout=60s >&2; then
	"$KUBECTL" -n "$NS" logs deploy/hubble-relay --tail=10 >&2 || true
	die "hubble-relay is not ready in cluster $CLUSTER (its log above)" \
		"it is ready once it reaches the agents through Service $NS/hubble-peer: see 'kubectl -n $NS describe pods -l k8s-app=hubble-relay'"
fi
if ss -Hltn "sport = :$PORT" 2>/dev/null | grep -q .; then
	die "localhost:$PORT is already taken (another 'make hubble'?)" "stop what listens there, or run 'make hubble HUBBLE_PORT=<free port>'"
fi

server=""
[ "$PORT" = 4245 ] || server=" --server localhost:$PORT"
step "hubble: Service $NS/hubble-relay:80 on localhost:$PORT ($("$BIN_DIR/hubble" version | cut -d' ' -f1-2)); Ctrl-C stops"
cat >&2 <<EOF
In another terminal:
  export PATH=$BIN_DIR:\$PATH
  hubble status$server                  # every node connected
  hubble list nodes$server
  hubble observe$server --namespace default --verdict DROPPED
  hubble observe$server --follow -o json
EOF
exec "$KUBECTL" -n "$NS" port-forward --address 127.0.0.1 service/hubble-relay "$PORT:80"
