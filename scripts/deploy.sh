#!/usr/bin/env bash
# Deploys flatnet onto kind cluster $CLUSTER: builds and loads the agent image
# and the hubble-relay image, applies the CRDs, creates Hubble's TLS Secrets
# (flatnet-certgen), applies the agent's manifests, waits until every node is
# Ready (the agent installed the CNI plugin there) and CoreDNS runs, then applies
# hubble-relay's and waits until it reaches the agents.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
KUBECTL="$BIN_DIR/kubectl"
export KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"
MANIFESTS="$REPO_ROOT/dataplane/manifests"
TIMEOUT=${DEPLOY_TIMEOUT:-240s}

require_cluster "create it with 'make cluster CLUSTER=$CLUSTER'"

# on_failure: what an operator needs to see when a wait times out.
on_failure() {
	warn "deploy did not finish; state of the cluster:"
	"$KUBECTL" get nodes -o wide >&2 || true
	"$KUBECTL" -n flatnet-system get pods -o wide >&2 || true
	"$KUBECTL" -n flatnet-system logs -l app.kubernetes.io/name=flatnet-agent --tail=20 --prefix >&2 || true
	"$KUBECTL" -n kube-system get pods -l k8s-app=kube-dns -o wide >&2 || true
}

# The agent and relay images side by side: when nothing changed each is only a
# kind load finding its image on every node already, a few seconds each that
# need not add up.
images=$(mktemp -d)
trap 'rm -rf "$images"' EXIT
bash "$REPO_ROOT/scripts/agent-image.sh" >"$images/agent" &
agent_pid=$!
bash "$REPO_ROOT/scripts/relay-image.sh" >"$images/relay" &
relay_pid=$!
wait "$agent_pid" || die "building or loading the agent image failed (scripts/agent-image.sh, output above)"
wait "$relay_pid" || die "building or loading the hubble-relay image failed (scripts/relay-image.sh, output above)"
IMAGE=$(tail -n 1 "$images/agent")
[ -n "$IMAGE" ] || die "agent-image.sh printed no image ref"
RELAY_IMAGE=$(tail -n 1 "$images/relay")
[ -n "$RELAY_IMAGE" ] || die "relay-image.sh printed no image ref"

step "deploy: CRDs"
"$KUBECTL" apply --server-side -f "$MANIFESTS/crds/" >&2
"$KUBECTL" wait --for=condition=Established --timeout=60s -f "$MANIFESTS/crds/" >&2

# Hubble's mutual-TLS Secrets exist before the agents start (the agent manifest's
# CronJob renews them): flatnet-certgen, built and run here with our kubeconfig.
# Built again only when the agent image's tag changed: that tag hashes every
# input of dataplane/ (flatnet-certgen's included), so an equal tag is the same binary.
step "deploy: Hubble TLS certificates (flatnet-certgen)"
"$KUBECTL" get namespace flatnet-system >/dev/null 2>&1 || "$KUBECTL" create namespace flatnet-system --save-config >&2
CERTGEN="$BIN_DIR/flatnet-certgen"
if ! [ -x "$CERTGEN" ] || [ "$(cat "$CERTGEN.inputs" 2>/dev/null)" != "${IMAGE##*:}" ]; then
	rm -f "$CERTGEN.inputs"
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/certgen-build.log" nice go build -trimpath -o "$CERTGEN" ./dataplane/cmd/flatnet-certgen)
	echo "${IMAGE##*:}" >"$CERTGEN.inputs"
fi
"$CERTGEN" --kubeconfig "$KUBECONFIG" --namespace flatnet-system --cluster-name default >&2 ||
	die "flatnet-certgen could not create the Hubble TLS Secrets (output above)"

# The agents reach the API server at the address it advertises (the EndpointSlice
# of default/kubernetes), not through the Service's ClusterIP: kube-proxy's rules
# are not there yet when a restarted node's agent starts.
# After a recovery the EndpointSlice can still name an address the control plane
# held while Docker had the nodes shuffled (another node's, now): it is read until
# it names a control-plane node's InternalIP, for a minute at most (a cluster
# without the control-plane role label is taken as it is).
cp_ips=" $("$KUBECTL" get nodes -l node-role.kubernetes.io/control-plane \
	-o jsonpath='{range .items[*]}{.status.addresses[?(@.type=="InternalIP")].address}{" "}{end}' 2>/dev/null) "
for try in $(seq 30); do
	api_endpoint=$("$KUBECTL" -n default get endpointslices -l kubernetes.io/service-name=kubernetes \
		-o jsonpath='{range .items[0]}{.endpoints[0].addresses[0]} {.ports[?(@.name=="https")].port}{end}') || true
	read -r API_SERVER_HOST API_SERVER_PORT <<<"$api_endpoint"
	[ -z "${cp_ips// /}" ] || [[ "$cp_ips" == *" ${API_SERVER_HOST:-none} "* ]] && break
	[ "$try" = 1 ] && info "the kubernetes EndpointSlice names ${API_SERVER_HOST:-nothing}, no control-plane node's address (${cp_ips# }): waiting for the API server to update it"
	sleep 2
done
[[ "${API_SERVER_HOST:-}" =~ ^[0-9.]+$ && "${API_SERVER_PORT:-}" =~ ^[0-9]+$ ]] ||
	die "the API server's address is not in the EndpointSlice of default/kubernetes (got '$api_endpoint')" \
		"check '$KUBECTL -n default get endpointslices -l kubernetes.io/service-name=kubernetes -o yaml'"

step "deploy: flatnet agent $IMAGE (subnet $NODE_SUBNET, gateway $NODE_GATEWAY, docker range $NODE_IP_RANGE, reserved $TEST_WORLD_CIDR, API server $API_SERVER_HOST:$API_SERVER_PORT)"
render() { # MANIFEST: the manifest with every placeholder filled in
	sed -e "s|@IMAGE@|$IMAGE|g" -e "s|@RELAY_IMAGE@|$RELAY_IMAGE|g" -e "s|@NODE_SUBNET@|$NODE_SUBNET|g" \
		-e "s|@NODE_GATEWAY@|$NODE_GATEWAY|g" -e "s|@NODE_IP_RANGE@|$NODE_IP_RANGE|g" \
		-e "s|@TEST_WORLD_CIDR@|$TEST_WORLD_CIDR|g" \
		-e "s|@API_SERVER_HOST@|$API_SERVER_HOST|g" -e "s|@API_SERVER_PORT@|$API_SERVER_PORT|g" \
		-e "s|@SERVICE_SUBNET@|$SERVICE_SUBNET|g" "$1"
	echo "---"
}
# hubble-relay.yaml goes on once the agents run (below): the relay must run
# beside an agent and prefers a control-plane node, and scheduled before that
# node's agent existed it settled on a worker, which tests restart.
RELAY_MANIFEST="$MANIFESTS/hubble-relay.yaml"
for f in "$MANIFESTS"/*.yaml; do
	[ "$f" = "$RELAY_MANIFEST" ] || render "$f"
done | "$KUBECTL" apply -f - | tee "$OUT_DIR/deploy-apply.out" >&2

# After the node containers were stopped and started again (a rebooted laptop, the
# next CI run), the API server still holds what it knew before: the DaemonSet's
# status, the pods' Ready conditions and the nodes' Ready condition all say "ready"
# until each kubelet reports again. So every wait below only counts what happened
# since its node container started: a Ready agent pod whose container started after
# its node did, a node Ready condition heartbeat after that start.
node_started() { # NODE -> epoch seconds its container started (0: not a container of ours)
	local t
	t=$(docker inspect -f '{{.State.StartedAt}}' "$1" 2>/dev/null) || { echo 0; return; }
	date -d "$t" +%s 2>/dev/null || echo 0
}
declare -A started
for n in $("$KUBECTL" get nodes -o jsonpath='{.items[*].metadata.name}'); do started[$n]=$(node_started "$n"); done

# fresh_pods NAMESPACE SELECTOR: "node pod" of every Ready pod whose containers all
# run and started after its node container did.
fresh_pods() {
	local node pod ready starts s ok
	while read -r node pod ready starts; do
		[ "$ready" = True ] && [ -n "$starts" ] || continue
		ok=1
		for s in ${starts//,/ }; do
			[ "$(date -d "$s" +%s)" -ge "${started[$node]:-0}" ] || ok=0
		done
		[ $ok = 1 ] && echo "$node $pod"
	done < <("$KUBECTL" -n "$1" get pods -l "$2" -o jsonpath='{range .items[*]}{.spec.nodeName}{" "}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{range .status.containerStatuses[*]}{.state.running.startedAt}{","}{end}{"\n"}{end}' 2>/dev/null)
}

# wait_for WHAT CHECK: polls CHECK (prints "have/want", exits 0 when done) until TIMEOUT.
wait_for() {
	local what=$1 check=$2 deadline=$((SECONDS + ${TIMEOUT%s})) last=""
	while :; do
		last=$($check) && { info "$what: $last"; return 0; }
		[ $SECONDS -ge $deadline ] && { warn "$what: only $last after $TIMEOUT"; return 1; }
		sleep 2
	done
}
agents_check() {
	local want have
	want=${#started[@]}
	have=$(fresh_pods flatnet-system app.kubernetes.io/name=flatnet-agent | awk '{print $1}' | sort -u | wc -l)
	echo "agents ready (started since their node) on $have of $want nodes"
	[ "$have" -ge "$want" ]
}
nodes_check() {
	local want=${#started[@]} have=0 n hb
	for n in "${!started[@]}"; do
		hb=$("$KUBECTL" get node "$n" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}' 2>/dev/null)
		[ "${hb%% *}" = True ] && [ "$(date -d "${hb#* }" +%s 2>/dev/null || echo 0)" -ge "${started[$n]}" ] && have=$((have + 1))
	done
	echo "$have of $want nodes Ready (heartbeat since their node started)"
	[ "$have" -ge "$want" ]
}
# some_pod_check NAMESPACE SELECTOR WHAT: one Ready pod of SELECTOR at least.
some_pod_check() {
	local have
	have=$(fresh_pods "$1" "$2" | wc -l)
	echo "$have $3 pods ready since their node started"
	[ "$have" -ge 1 ]
}

step "deploy: waiting for the agent on every node"
if ! "$KUBECTL" -n flatnet-system rollout status ds/flatnet-agent --timeout="$TIMEOUT" >&2 ||
	! wait_for "flatnet agents" agents_check; then
	on_failure
	die "the flatnet agent did not become ready on every node within $TIMEOUT"
fi
step "deploy: waiting for every node to be Ready"
if ! wait_for "nodes" nodes_check; then
	on_failure
	die "not every node became Ready within $TIMEOUT"
fi
step "deploy: waiting for CoreDNS"
if ! "$KUBECTL" -n kube-system rollout status deploy/coredns --timeout="$TIMEOUT" >&2 ||
	! wait_for "CoreDNS" "some_pod_check kube-system k8s-app=kube-dns CoreDNS"; then
	on_failure
	die "CoreDNS did not run within $TIMEOUT"
fi
step "deploy: hubble-relay beside the agents"
render "$RELAY_MANIFEST" | "$KUBECTL" apply -f - | tee -a "$OUT_DIR/deploy-apply.out" >&2
# The relay reads its ConfigMap only when it starts: a changed one needs a new pod.
if grep -q '^configmap/hubble-relay-config configured' "$OUT_DIR/deploy-apply.out"; then
	info "hubble-relay's configuration changed: restarting it"
	"$KUBECTL" -n flatnet-system rollout restart deploy/hubble-relay >&2
fi
# Ready means the relay's gRPC health is SERVING: it reached the hubble-peer
# Service and at least one agent over mutual TLS.
step "deploy: waiting for hubble-relay $RELAY_IMAGE"
if ! "$KUBECTL" -n flatnet-system rollout status deploy/hubble-relay --timeout="$TIMEOUT" >&2 ||
	! wait_for "hubble-relay" "some_pod_check flatnet-system k8s-app=hubble-relay hubble-relay"; then
	"$KUBECTL" -n flatnet-system get secret hubble-relay-client-certs >/dev/null 2>&1 ||
		warn "Secret flatnet-system/hubble-relay-client-certs is missing: the relay cannot start without its client certificate"
	"$KUBECTL" -n flatnet-system describe pods -l k8s-app=hubble-relay 2>&1 | tail -n 25 >&2 || true
	"$KUBECTL" -n flatnet-system logs deploy/hubble-relay --tail=20 >&2 || true
	die "hubble-relay did not become ready within $TIMEOUT"
fi
"$KUBECTL" get ipblocks.flatnet.io >&2
info "flatnet deployed on cluster $CLUSTER"
