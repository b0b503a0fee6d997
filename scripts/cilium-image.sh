#!/usr/bin/env bash
# Builds the images of Cilium $CILIUM_VERSION with no registry, from the programs
# scripts/cilium-build.sh builds:
#   flatnet/cilium:<hash>           the agent: a Debian $DEBIAN_SUITE rootfs (debootstrap)
#                                   with what the agent runs besides itself: clang-19
#                                   (it compiles bpf/ at run time and needs clang >= 18
#                                   as `clang` on PATH), iproute2, iptables (nft, as the
#                                   kind node's kube-proxy), ipset, kmod; then upstream's
#                                   layout of programs, CNI's loopback, scripts and bpf/
#                                   (the tree's node/, portmap, goes on the nodes:
#                                   scripts/cilium-cluster.sh).
#   flatnet/cilium-operator:<hash>  the generic operator, FROM scratch (a static program).
# Each tag is a hash of its inputs, so unchanged inputs reuse the image. Loads both
# into kind cluster $CLUSTER (default cilium-ref) when it runs here. The last two
# lines on stdout are AGENT_IMAGE=<ref> and OPERATOR_IMAGE=<ref>.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-cilium-ref}
WORK="$OUT_DIR/cilium-image"
# llvm-19's tools are left out: the agent runs clang only (pkg/datapath/loader),
# and clang-19 brings libllvm19, its compiler back ends, itself.
AGENT_PACKAGES="clang-19 iproute2 iptables ipset kmod ca-certificates"

timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers" "run 'make engine' first"

TREE=$(bash "$REPO_ROOT/scripts/cilium-build.sh" | tail -n1)
tree_hash=$(basename "$TREE")
mkdir -p "$WORK"

# ensure_image WHAT REF BUILD: builds REF with the function BUILD (given REF and
# its build directory) unless the engine has it already.
ensure_image() {
	local what=$1 ref=$2 build=$3
	if docker image inspect "$ref" >/dev/null 2>&1; then
		info "$what $ref: up to date"
		return
	fi
	step "$what: building $ref"
	rm -rf "$WORK/ctx" && mkdir -p "$WORK/ctx"
	"$build" "$ref" "$WORK/ctx"
	rm -rf "$WORK/ctx"
	info "$what $ref: $(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%.0f MB", $1/1e6}')"
}

# The agent: the rootfs, then upstream's layout of the programs over it.
build_agent() { # REF CTX
	cp -a "$TREE/." "$2/tree"
	rm -rf "$2/tree/operator" "$2/tree/node" "$2/tree/.complete"
	cat >"$2/Dockerfile" <<DOCKERFILE
FROM $ROOTFS
COPY tree/ /
# Debian names it clang-19; the agent runs "clang".
RUN ln -s /usr/bin/clang-19 /usr/local/bin/clang && mkdir -p /home/cilium && \
    clang --version | grep -q 'version 19\\.' && cilium-agent --version
ENV HUBBLE_SERVER=unix:///var/run/cilium/hubble.sock INITSYSTEM=SYSTEMD
WORKDIR /home/cilium
CMD ["/usr/bin/cilium-dbg"]
LABEL org.opencontainers.image.title=cilium org.opencontainers.image.version=$CILIUM_VERSION
DOCKERFILE
	run_logged "$WORK/agent-build.log" docker build -t "$1" "$2"
}

# The operator: one static program and /tmp, FROM scratch.
build_operator() { # REF CTX
	mkdir -p "$2/rootfs/tmp"
	cp -a "$TREE/operator/." "$2/rootfs/"
	chmod 1777 "$2/rootfs/tmp"
	import_rootfs "$2/rootfs" "$1" \
		--change 'ENV PATH=/usr/bin' \
		--change 'ENTRYPOINT ["/usr/bin/cilium-operator-generic"]' \
		--change "LABEL org.opencontainers.image.title=cilium-operator-generic org.opencontainers.image.version=$CILIUM_VERSION"
}

ROOTFS=$(rootfs_image cilium flatnet/cilium-rootfs "$AGENT_PACKAGES" "$WORK")
self=$(sha256sum <"$0")
AGENT="flatnet/cilium:$(echo "$ROOTFS $tree_hash $self" | sha256sum | cut -c1-16)"
OPERATOR="flatnet/cilium-operator:$(echo "$tree_hash $self" | sha256sum | cut -c1-16)"
ensure_image "cilium agent image" "$AGENT" build_agent
ensure_image "cilium operator image" "$OPERATOR" build_operator

kind_load_image "cilium agent image" "$AGENT" "$WORK/load-agent.log"
kind_load_image "cilium operator image" "$OPERATOR" "$WORK/load-operator.log"
echo "AGENT_IMAGE=$AGENT"
echo "OPERATOR_IMAGE=$OPERATOR"
