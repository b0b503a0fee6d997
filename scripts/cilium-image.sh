#!/usr/bin/env bash
# Builds the images of Cilium $CILIUM_VERSION with no registry, from the programs
# scripts/cilium-build.sh builds:
#   flatnet/cilium:<hash>           the agent: a Debian $DEBIAN_SUITE rootfs (debootstrap)
#                                   with what the agent runs besides itself: clang-19
#                                   (it compiles bpf/ at run time and needs clang >= 18
#                                   as `clang` on PATH), iproute2, iptables (nft, as the
#                                   kind node's kube-proxy), ipset, kmod; then upstream's
#                                   layout of programs, CNI plugins, scripts and bpf/.
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

# The agent.
ROOTFS=$(rootfs_image cilium flatnet/cilium-rootfs "$AGENT_PACKAGES" "$WORK")
agent_tag=$(echo "$ROOTFS $tree_hash $(sha256sum <"$0")" | sha256sum | cut -c1-16)
AGENT="flatnet/cilium:$agent_tag"
if docker image inspect "$AGENT" >/dev/null 2>&1; then
	info "cilium agent image $AGENT: up to date"
else
	step "cilium agent image: building $AGENT"
	ctx="$WORK/agent"
	rm -rf "$ctx" && mkdir -p "$ctx"
	cp -a "$TREE/." "$ctx/tree"
	rm -rf "$ctx/tree/operator" "$ctx/tree/.complete"
	cat >"$ctx/Dockerfile" <<DOCKERFILE
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
	run_logged "$WORK/agent-build.log" docker build -t "$AGENT" "$ctx"
	rm -rf "$ctx"
	info "cilium agent image $AGENT: $(docker image inspect -f '{{.Size}}' "$AGENT" | awk '{printf "%.0f MB", $1/1e6}')"
fi

# The operator.
op_tag=$(echo "$tree_hash $(sha256sum <"$0")" | sha256sum | cut -c1-16)
OPERATOR="flatnet/cilium-operator:$op_tag"
if docker image inspect "$OPERATOR" >/dev/null 2>&1; then
	info "cilium operator image $OPERATOR: up to date"
else
	step "cilium operator image: building $OPERATOR"
	ctx="$WORK/operator"
	rm -rf "$ctx" && mkdir -p "$ctx/rootfs/tmp"
	cp -a "$TREE/operator/." "$ctx/rootfs/"
	chmod 1777 "$ctx/rootfs/tmp"
	tar -C "$ctx/rootfs" --owner=0 --group=0 --numeric-owner -c . |
		docker import \
			--change 'ENV PATH=/usr/bin' \
			--change 'ENTRYPOINT ["/usr/bin/cilium-operator-generic"]' \
			--change "LABEL org.opencontainers.image.title=cilium-operator-generic org.opencontainers.image.version=$CILIUM_VERSION" \
			- "$OPERATOR" >/dev/null || die "docker import of $OPERATOR failed"
	rm -rf "$ctx"
	info "cilium operator image $OPERATOR: $(docker image inspect -f '{{.Size}}' "$OPERATOR" | awk '{printf "%.0f MB", $1/1e6}')"
fi

kind_load_image "cilium agent image" "$AGENT" "$WORK/load-agent.log"
kind_load_image "cilium operator image" "$OPERATOR" "$WORK/load-operator.log"
echo "AGENT_IMAGE=$AGENT"
echo "OPERATOR_IMAGE=$OPERATOR"
