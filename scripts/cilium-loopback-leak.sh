#!/usr/bin/env bash
# The minimal reproduction of the Cilium behaviour in dataplane/POLICY.md's
# "Measured against Cilium" table: a pod isolated by a deny-all ingress
# NetworkPolicy accepts new connections while it is itself connecting to its
# own ClusterIP (the service-loopback path), and never otherwise.
#
#   KUBECONFIG=_output/cilium-ref.kubeconfig PROBE_IMAGE=flatnet/probe:<tag> \
#     bash scripts/cilium-loopback-leak.sh
#
# In namespace loopback-leak: pods server (serve-hostname on 80) and client on
# one node, Service server, NetworkPolicy deny-all (ingress, on the server).
# The client probes the server's pod IP N times (probe batch, 300 ms each)
# twice: alone (expected: 0 connect), then while the server runs its own probe
# batch against its own ClusterIP. Prints both counts; exits 1 if the first is
# not 0 (the policy is not enforced at all). The namespace is removed at exit.
# Run it against any cluster: on one without the behaviour both counts are 0.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[ -n "${KUBECONFIG:-}" ] || die "set KUBECONFIG to the cluster to test"
[ -n "${PROBE_IMAGE:-}" ] || die "set PROBE_IMAGE to the probe image its nodes have (make cilium-cluster prints it)"
K="$BIN_DIR/kubectl"
NS=loopback-leak
N=${N:-200}

node=$("$K" get nodes -o name | grep -v control-plane | head -n 1 | cut -d/ -f2)
[ -n "$node" ] || die "no worker node"
trap '"$K" delete namespace "$NS" --wait=false >/dev/null 2>&1 || true' EXIT
step "namespace $NS: server and client on $node, Service server, deny-all ingress on the server"
"$K" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: $NS, labels: {app: server}}
spec:
  nodeName: $node
  containers:
  - {name: server, image: $PROBE_IMAGE, imagePullPolicy: Never, command: ["/agnhost", "serve-hostname", "--tcp", "--http=false", "--port", "80"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: $NS}
spec:
  nodeName: $node
  containers:
  - {name: client, image: $PROBE_IMAGE, imagePullPolicy: Never, command: ["/agnhost", "pause"]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: $NS}
spec:
  selector: {app: server}
  ports: [{port: 80, targetPort: 80, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: $NS}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
EOF
"$K" -n "$NS" wait --for=condition=Ready pod/server pod/client --timeout=120s >/dev/null
pod_ip=$("$K" -n "$NS" get pod server -o jsonpath='{.status.podIP}')
svc_ip=$("$K" -n "$NS" get service server -o jsonpath='{.spec.clusterIP}')
sleep 5 # the policy reaches the datapath

# probe_server prints how many of N connects from the client to the server's
# pod IP got through.
probe_server() {
	local c
	c=$(yes "$pod_ip:80" | head -n "$N" |
		"$K" -n "$NS" exec -i client -- /agnhost batch --timeout 300ms --parallel 4 |
		grep -c '"verdict":"connected"') || true
	echo "${c:-0}"
}

alone=$(probe_server)
info "client -> server $pod_ip:80, server idle: $alone of $N connected"

# The server connects to its own ClusterIP (Cilium's service loopback) for
# longer than the second round of probes takes.
yes "$svc_ip:80" | head -n 200000 |
	"$K" -n "$NS" exec -i server -- /agnhost batch --timeout 1s --parallel 4 >/dev/null 2>&1 &
loop=$!
sleep 2
busy=$(probe_server)
kill "$loop" 2>/dev/null || true
wait "$loop" 2>/dev/null || true
info "client -> server $pod_ip:80, server connecting to its own ClusterIP $svc_ip:80: $busy of $N connected"

echo "idle=$alone busy=$busy n=$N"
[ "$alone" = 0 ] || die "the deny-all policy let $alone of $N connects through with the server idle: not enforced"
