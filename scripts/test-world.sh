#!/usr/bin/env bash
# The offline test world of cluster $CLUSTER: containers on its node subnet (the
# docker network <cluster>-net) at addresses of TEST_WORLD_CIDR (kind-configs/
# network.env), outside every node and never a pod's, so to policy they are
# `world` and no probe leaves the machine (cilium-cli's pod-to-world and
# pod-to-cidr, with our own servers):
#
#   test-world-<cluster>-web-1  <cidr>+10  probe netexec: HTTP on TCP 80, UDP 80, ICMP echo (kernel)
#   test-world-<cluster>-web-2  <cidr>+11  the same (the one an `except` leaves out)
#   test-world-<cluster>-client <cidr>+20  probe pause: the outside client (docker exec probe ...)
#
# Usage: scripts/test-world.sh [up|down]   (make test-world)
# Idempotent: a running container of the right image and address is kept, a
# stopped one (a machine restart) started, any other replaced. The plan is
# checked before any docker work (TEST_WORLD_CIDR inside NODE_SUBNET, outside
# NODE_IP_RANGE: flatnet-cluster network), then against the live cluster (no
# claimed IPBlock and no pod inside it). Writes $OUT_DIR/<cluster>.test-world.env,
# which the suites read (FLATNET_TEST_WORLD).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
KUBECONFIG=${KUBECONFIG:-$OUT_DIR/$CLUSTER.kubeconfig}
export KUBECONFIG
ACTION=${1:-up}
PREFIX="test-world-$CLUSTER"
NETWORK="$CLUSTER-net"
ENV_OUT="$OUT_DIR/$CLUSTER.test-world.env"

case "$ACTION" in
up | down) ;;
*) die "unknown action '$ACTION'" "usage: scripts/test-world.sh [up|down]" ;;
esac

if [ "$ACTION" = down ]; then
	step "test world: removing the containers $PREFIX-*"
	docker ps -aq --filter "name=^$PREFIX-" | xargs -r docker rm -f >/dev/null
	rm -f "$ENV_OUT"
	exit 0
fi

# 1. The plan, checked by the same Go code as `make cluster`, before anything else.
(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/flatnet-cluster.build.log" \
	go build -trimpath -o "$BIN_DIR/flatnet-cluster" ./internal/cmd/flatnet-cluster)
plan=$("$BIN_DIR/flatnet-cluster" -name "$CLUSTER" -repo "$REPO_ROOT" -out "$OUT_DIR" network) ||
	die "the address plan is refused (above); nothing was started"
eval "$plan"

# ip_add A N: IPv4 address A plus N.
ip_add() {
	local IFS=. a b c d
	read -r a b c d <<<"$1"
	local v=$(((a << 24 | b << 16 | c << 8 | d) + $2))
	echo "$((v >> 24 & 255)).$((v >> 16 & 255)).$((v >> 8 & 255)).$((v & 255))"
}
base=${TEST_WORLD_CIDR%/*}
bits=${TEST_WORLD_CIDR#*/}
[ "$bits" -le 27 ] || die "TEST_WORLD_CIDR=$TEST_WORLD_CIDR is too small" "use a /27 or larger: the test world uses offsets 10, 11 and 20"
WEB1=$(ip_add "$base" 10)
WEB2=$(ip_add "$base" 11)
CLIENT=$(ip_add "$base" 20)

# 2. The live cluster: its docker network is this plan's, and IPAM gave nothing inside the range.
subnet=$(docker network inspect "$NETWORK" -f '{{range .IPAM.Config}}{{.Subnet}}{{end}}' 2>/dev/null) ||
	die "docker network $NETWORK does not exist" "create cluster $CLUSTER first (make cluster CLUSTER=$CLUSTER)"
[ "$subnet" = "$NODE_SUBNET" ] ||
	die "docker network $NETWORK is $subnet, the plan's NODE_SUBNET is $NODE_SUBNET" "set the variables of kind-configs/network.env the cluster was made with"
require_cluster "create it first (make cluster CLUSTER=$CLUSTER)"
KUBECTL="$BIN_DIR/kubectl"
in_world() { # in_world FIRST LAST: whether [FIRST, LAST] overlaps TEST_WORLD_CIDR
	local IFS=. a b c d lo hi wlo whi
	read -r a b c d <<<"$1"
	lo=$((a << 24 | b << 16 | c << 8 | d))
	read -r a b c d <<<"$2"
	hi=$((a << 24 | b << 16 | c << 8 | d))
	read -r a b c d <<<"$base"
	wlo=$((a << 24 | b << 16 | c << 8 | d))
	whi=$((wlo + (1 << (32 - bits)) - 1))
	[ "$lo" -le "$whi" ] && [ "$hi" -ge "$wlo" ]
}
while read -r name first size; do
	[ -n "$name" ] || continue
	last=$(ip_add "$first" $((size - 1)))
	if in_world "$first" "$last"; then
		die "TEST_WORLD_CIDR=$TEST_WORLD_CIDR overlaps IPBlock $name ($first-$last), which flatnet's IPAM already gave node pods" \
			"pick another TEST_WORLD_CIDR inside $NODE_SUBNET, or redeploy flatnet with it (make deploy) and release that block"
	fi
done < <("$KUBECTL" get ipblocks.flatnet.io -o jsonpath='{range .items[*]}{.metadata.name} {.spec.first} {.spec.size}{"\n"}{end}' 2>/dev/null || true)
while read -r pod ip; do
	[ -n "$ip" ] || continue
	if in_world "$ip" "$ip"; then
		die "TEST_WORLD_CIDR=$TEST_WORLD_CIDR holds pod $pod's address $ip" "pick another TEST_WORLD_CIDR inside $NODE_SUBNET"
	fi
done < <("$KUBECTL" get pods -A -o jsonpath='{range .items[?(@.spec.hostNetwork!=true)]}{.metadata.namespace}/{.metadata.name} {.status.podIP}{"\n"}{end}')

# 3. The image: the probe image the cluster runs (it is in the local engine).
PROBE_IMAGE=${PROBE_IMAGE:-$(tail -n 1 "$OUT_DIR/probe-image.out" 2>/dev/null || true)}
[ -n "$PROBE_IMAGE" ] && docker image inspect "$PROBE_IMAGE" >/dev/null 2>&1 ||
	die "probe image '${PROBE_IMAGE:-}' is not in the local docker engine" "build it (make images CLUSTER=$CLUSTER) or set PROBE_IMAGE"

# ensure NAME IP ARGS...: the container NAME at IP running the probe image with ARGS.
ensure() {
	local name=$1 ip=$2
	shift 2
	local want="$PROBE_IMAGE $ip $*" have
	have=$(docker inspect "$name" -f '{{.Config.Image}} {{(index .NetworkSettings.Networks "'"$NETWORK"'").IPAMConfig.IPv4Address}} {{join .Args " "}}' 2>/dev/null || true)
	if [ -n "$have" ] && [ "$have" != "$want" ]; then
		info "$name: replacing ($have)"
		docker rm -f "$name" >/dev/null
		have=
	fi
	if [ -z "$have" ]; then
		docker run -d --name "$name" --network "$NETWORK" --ip "$ip" --restart unless-stopped \
			--label "flatnet.test-world=$CLUSTER" "$PROBE_IMAGE" "$@" >/dev/null
		info "$name: started at $ip"
	elif [ "$(docker inspect "$name" -f '{{.State.Running}}')" != true ]; then
		docker start "$name" >/dev/null
		info "$name: restarted at $ip"
	else
		info "$name: running at $ip"
	fi
}
step "test world of $CLUSTER: $TEST_WORLD_CIDR on $NETWORK ($PROBE_IMAGE)"
ensure "$PREFIX-web-1" "$WEB1" netexec --http-port=80 --udp-port=80
ensure "$PREFIX-web-2" "$WEB2" netexec --http-port=80 --udp-port=80
ensure "$PREFIX-client" "$CLIENT" pause

# 4. Serving: the outside client reaches both servers over TCP and UDP.
for ip in "$WEB1" "$WEB2"; do
	for proto in tcp udp; do
		ok=
		for _ in $(seq 20); do
			if docker exec "$PREFIX-client" /agnhost connect "$ip:80" --protocol="$proto" --timeout=1s >/dev/null 2>&1; then
				ok=1
				break
			fi
			sleep 0.5
		done
		[ -n "$ok" ] || die "$ip:80/$proto does not answer the test world's client" "docker logs $PREFIX-web-1 / $PREFIX-web-2"
	done
done
cat >"$ENV_OUT" <<EOF
TEST_WORLD_CIDR=$TEST_WORLD_CIDR
TEST_WORLD_SERVERS=$WEB1,$WEB2
TEST_WORLD_CLIENT=$PREFIX-client
TEST_WORLD_CLIENT_IP=$CLIENT
EOF
printf '%-28s %-15s %s\n' container address serves >&2
printf '%-28s %-15s %s\n' "$PREFIX-web-1" "$WEB1" "80/TCP 80/UDP ICMP" "$PREFIX-web-2" "$WEB2" "80/TCP 80/UDP ICMP" "$PREFIX-client" "$CLIENT" "(outside client)" >&2
info "written $ENV_OUT (FLATNET_TEST_WORLD for the suites)"
