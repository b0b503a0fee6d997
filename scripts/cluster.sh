#!/usr/bin/env bash
# Cluster lifecycle on kind (its CLI, built from the module pinned in go.mod).
#
#   cluster.sh up     create cluster $CLUSTER (topology $CONFIG) on its own docker
#                     network, or do nothing if it is healthy, or recover/recreate it
#   cluster.sh down   remove the cluster and its network, nothing else
#   cluster.sh status exit 0 when the cluster answers
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
CONFIG=${CONFIG:-default}
NETWORK="$CLUSTER-net"
KIND="$BIN_DIR/kind"
KUBECTL="$BIN_DIR/kubectl"
export KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"
export KIND_EXPERIMENTAL_DOCKER_NETWORK="$NETWORK"

[[ "$CLUSTER" =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] ||
	die "CLUSTER=$CLUSTER is not a valid cluster name" "use lower-case letters, digits and '-', at most 31 characters"

# --- address arithmetic for the busy-subnet check -------------------------------
ip2int() { local IFS=.; set -- $1; echo $((($1 << 24) | ($2 << 16) | ($3 << 8) | $4)); }
cidr_range() { # CIDR -> "first last"
	local ip=${1%/*} len=${1#*/} n
	n=$(ip2int "$ip")
	local size=$((1 << (32 - len)))
	echo "$((n & ~(size - 1) & 0xffffffff)) $(((n & ~(size - 1) & 0xffffffff) + size - 1))"
}
overlaps() { # CIDR CIDR
	local a b
	read -r a1 a2 <<<"$(cidr_range "$1")"
	read -r b1 b2 <<<"$(cidr_range "$2")"
	[ "$a1" -le "$b2" ] && [ "$b1" -le "$a2" ]
}

node_containers() { docker ps -a --filter "label=io.x-k8s.kind.cluster=$CLUSTER" --format '{{.Names}}' 2>/dev/null; }

cluster_answers() {
	[ -f "$KUBECONFIG" ] && timeout 20 "$KUBECTL" get --raw /readyz >/dev/null 2>&1
}

# ensure_network: the cluster's docker network with the node subnet and its fence,
# or a clear refusal if the subnet is taken by something else.
ensure_network() {
	ensure_network_only
	fence add
}

ensure_network_only() {
	if docker network inspect "$NETWORK" >/dev/null 2>&1; then
		local have
		have=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' "$NETWORK")
		[ "$have" = "$NODE_SUBNET" ] || die "docker network $NETWORK exists with subnet $have, not $NODE_SUBNET" \
			"remove it (make cluster-down CLUSTER=$CLUSTER) or set NODE_SUBNET=$have"
		return
	fi
	local net sub
	for net in $(docker network ls -q); do
		for sub in $(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$net"); do
			[[ "$sub" == *:* ]] && continue
			if overlaps "$sub" "$NODE_SUBNET"; then
				die "the node subnet $NODE_SUBNET is busy: docker network $(docker network inspect -f '{{.Name}}' "$net") uses $sub" \
					"remove that network, or pick a free range: NODE_SUBNET=10.225.0.0/16 NODE_GATEWAY=10.225.0.1 NODE_IP_RANGE=10.225.0.0/27 make cluster"
			fi
		done
	done
	local route
	while read -r route _; do
		[[ "$route" == */* ]] || continue
		overlaps "$route" "$NODE_SUBNET" &&
			die "the node subnet $NODE_SUBNET is busy: the host routes $route" \
				"pick a free range: NODE_SUBNET=10.225.0.0/16 NODE_GATEWAY=10.225.0.1 NODE_IP_RANGE=10.225.0.0/27 make cluster"
	done < <(ip -4 route show | grep -v '^default')
	info "docker network $NETWORK: $NODE_SUBNET (nodes in $NODE_IP_RANGE, the rest for pods)"
	# No masquerade: pod and node traffic never leaves this machine with a borrowed address.
	docker network create -d bridge --subnet "$NODE_SUBNET" --gateway "$NODE_GATEWAY" \
		--ip-range "$NODE_IP_RANGE" --label "flatnet.io/cluster=$CLUSTER" \
		-o com.docker.network.bridge.enable_ip_masquerade=false \
		"$NETWORK" >/dev/null || die "could not create docker network $NETWORK"
}

# fence: nothing from the node subnet is forwarded off this machine. The host
# itself (INPUT) and the subnet stay reachable.
fence() {
	local op=$1 rule=(-s "$NODE_SUBNET" ! -d "$NODE_SUBNET" -j DROP)
	iptables -w -L DOCKER-USER -n >/dev/null 2>&1 || return 0
	if [ "$op" = add ]; then
		iptables -w -C DOCKER-USER "${rule[@]}" 2>/dev/null || iptables -w -I DOCKER-USER "${rule[@]}"
	else
		while iptables -w -D DOCKER-USER "${rule[@]}" 2>/dev/null; do :; done
	fi
}

# kind_node_ip NODE: the address kind gave the node, from its /kind/kubeadm.conf
# (node-ip); read with docker cp, which works on a stopped container too.
kind_node_ip() {
	docker cp "$1:/kind/kubeadm.conf" - 2>/dev/null | tar -xO 2>/dev/null | awk '/node-ip:/ {print $2; exit}'
}

# on_network NODE TEMPLATE: TEMPLATE applied to the node's endpoint on the
# cluster's network ({{.IPAddress}}: what it holds now; .IPAMConfig: what it is fixed to).
on_network() {
	docker inspect -f "{{with index .NetworkSettings.Networks \"$NETWORK\"}}$2{{end}}" "$1" 2>/dev/null
}

# nodes_on_their_addresses: every node container holds the address kind gave it
# (a cluster restarted by something else than this script may not).
nodes_on_their_addresses() {
	local n want have
	for n in $(node_containers); do
		want=$(kind_node_ip "$n")
		have=$(on_network "$n" '{{.IPAddress}}')
		if [ -n "$want" ] && [ "$want" != "$have" ]; then
			warn "node $n is on $have, not on its address $want"
			return 1
		fi
	done
}

# pin_node_ips: Docker gives a starting container the next free address of the
# network, so nodes started again after a host restart come back shuffled: a worker
# on the control plane's old address, whose API server then advertises another
# node's, kube-proxy sending the kubernetes Service there, agents crash-looping.
# Reconnect each stopped node with its kind_node_ip, fixed, before it starts.
pin_node_ips() {
	local n ip
	for n in $(node_containers); do
		ip=$(kind_node_ip "$n")
		if [ -z "$ip" ]; then
			warn "node $n: no node-ip in its /kind/kubeadm.conf; its address is left to Docker"
			continue
		fi
		[ "$(on_network "$n" '{{with .IPAMConfig}}{{.IPv4Address}}{{end}}')" = "$ip" ] && continue
		info "node $n: back on its address $ip"
		docker network disconnect -f "$NETWORK" "$n" >/dev/null 2>&1 || true
		docker network connect --ip "$ip" "$NETWORK" "$n" ||
			die "could not give node $n its address $ip on docker network $NETWORK" "recreate the cluster: make cluster-down CLUSTER=$CLUSTER && make cluster"
	done
}

wait_control_plane() {
	local i
	for i in $(seq 1 120); do
		if "$KUBECTL" -n kube-system get pods -l tier=control-plane -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' 2>/dev/null |
			grep -c Running | grep -qx 4; then
			return 0
		fi
		[ $((i % 15)) -eq 0 ] && info "waiting for the control plane ($i s)"
		sleep 1
	done
	"$KUBECTL" -n kube-system get pods -o wide >&2 || true
	return 1
}

# offline_dns: the cluster has no upstream resolver (the node's is Docker's
# 127.0.0.11, which inside a pod is the pod's own loopback: CoreDNS would forward
# to itself and its loop plugin stops it). CoreDNS answers cluster.local only and
# refuses the rest at once, so an outside name fails fast instead of timing out.
offline_dns() {
	local corefile
	corefile=$("$KUBECTL" -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')
	grep -q 'forward \. /etc/resolv.conf' <<<"$corefile" || return 0
	info "CoreDNS: cluster.local only (no upstream offline)"
	corefile=$(sed -e '/forward \. \/etc\/resolv.conf/,/}/d' -e '/^ *loop$/d' <<<"$corefile")
	"$KUBECTL" -n kube-system create configmap coredns --from-literal=Corefile="$corefile" \
		--dry-run=client -o yaml | "$KUBECTL" apply --server-side --force-conflicts -f - >/dev/null
	"$KUBECTL" -n kube-system rollout restart deployment coredns >/dev/null
}

wait_nodes_registered() {
	local want i
	want=$(node_containers | wc -l)
	for i in $(seq 1 120); do
		[ "$("$KUBECTL" get nodes --no-headers 2>/dev/null | wc -l)" -ge "$want" ] && return 0
		sleep 1
	done
	return 1
}

create() {
	local cfg_src="$REPO_ROOT/kind-configs/$CONFIG.yaml" image cfg
	[ -f "$cfg_src" ] || die "unknown cluster config CONFIG=$CONFIG" \
		"choose one of: $(cd "$REPO_ROOT/kind-configs" && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' ')"
	image=$(bash "$REPO_ROOT/scripts/node-image.sh" | tail -n 1)
	ensure_network
	cfg="$OUT_DIR/$CLUSTER.kind.yaml"
	sed -e "s#@NODE_SUBNET@#$NODE_SUBNET#" -e "s#@SERVICE_SUBNET@#$SERVICE_SUBNET#" "$cfg_src" >"$cfg"
	step "kind: creating cluster $CLUSTER ($CONFIG: $(grep -c 'role:' "$cfg") nodes, image $image)"
	if ! "$KIND" create cluster --name "$CLUSTER" --image "$image" --config "$cfg" \
		--kubeconfig "$KUBECONFIG" --retain 2>&1 | tee "$OUT_DIR/$CLUSTER.create.log" >&2; then
		collect_failure
		"$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
		docker network rm "$NETWORK" >/dev/null 2>&1 || true
		die "kind could not create cluster $CLUSTER (removed what it had made)" \
			"kind log: $OUT_DIR/$CLUSTER.create.log" "node logs: $OUT_DIR/$CLUSTER-failure/"
	fi
}

collect_failure() {
	local d="$OUT_DIR/$CLUSTER-failure" n
	mkdir -p "$d"
	for n in $(node_containers); do
		docker logs "$n" >"$d/$n.container.log" 2>&1 || true
		docker exec "$n" journalctl --no-pager -n 400 >"$d/$n.journal.log" 2>&1 || true
	done
}

up() {
	command -v iptables >/dev/null || apt_install iptables
	bash "$REPO_ROOT/scripts/docker-engine.sh"
	[ -x "$KIND" ] && [ -x "$KUBECTL" ] || die "bin/kind or bin/kubectl is missing" "run 'make tools' (make cluster does it)"
	if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		"$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG" 2>/dev/null || true
		if cluster_answers && [ -z "$(docker ps -a --filter "label=io.x-k8s.kind.cluster=$CLUSTER" --filter status=exited -q)" ] &&
			nodes_on_their_addresses; then
			info "cluster $CLUSTER: healthy, nothing to do"
			usage
			return
		fi
		step "cluster $CLUSTER: exists but does not answer (or its nodes moved); restarting its nodes"
		ensure_network
		docker stop $(node_containers) >/dev/null 2>&1 || true
		pin_node_ips
		docker start $(node_containers) >/dev/null 2>&1 || true
		local i
		for i in $(seq 1 90); do
			"$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG" 2>/dev/null || true
			cluster_answers && break
			sleep 2
		done
		if cluster_answers && wait_control_plane; then
			info "cluster $CLUSTER: recovered"
			usage
			return
		fi
		warn "cluster $CLUSTER did not recover; recreating it"
		"$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >/dev/null 2>&1 || true
	fi
	create
	wait_nodes_registered || die "not every node registered" "kubectl: KUBECONFIG=$KUBECONFIG $KUBECTL get nodes"
	wait_control_plane || die "the control plane did not come up in 2 minutes" "kubectl: KUBECONFIG=$KUBECONFIG $KUBECTL -n kube-system get pods"
	offline_dns
	info "cluster $CLUSTER: control plane running"
	usage
}

usage() {
	"$KUBECTL" get nodes -o wide >&2 || true
	cat >&2 <<MSG

  cluster $CLUSTER is up (node subnet $NODE_SUBNET on docker network $NETWORK)
    export KUBECONFIG=$KUBECONFIG
    $KUBECTL get nodes
  Nodes are NotReady until the flatnet CNI is deployed (make deploy).
MSG
}

down() {
	if [ -x "$KIND" ] && "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
		step "kind: deleting cluster $CLUSTER"
		"$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" >&2
	fi
	if docker network inspect "$NETWORK" >/dev/null 2>&1; then
		docker network rm "$NETWORK" >/dev/null && info "docker network $NETWORK: removed"
	fi
	fence del
	rm -f "$KUBECONFIG"
}

case "${1:-}" in
up) up ;;
down) down ;;
status) cluster_answers ;;
*) die "usage: $0 up|down|status" ;;
esac
