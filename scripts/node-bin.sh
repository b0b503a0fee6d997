#!/usr/bin/env bash
# Builds the node's binaries from the Go module proxy into the flatnet cache, each
# once: Kubernetes' own at K8S_VERSION (default KUBERNETES_VERSION; version ldflags;
# from the k8s.io/kubernetes module pinned in tools/go.mod, or for another release a
# module generated from that release's go.mod, scripts/node-image/release.sh; the
# default's kubectl is the tools'), etcd and CoreDNS at what that release's kubeadm
# lists (versions.env pins the default's; CoreDNS with the plugins an offline cluster
# can use, scripts/node-image/coredns),
# crictl at CRICTL_VERSION, a pause of our own and CNI's loopback plugin at go.mod's
# containernetworking/plugins (containerd 1.6's CRI runs it for every pod). Prints the
# directory as the last line of stdout.
#
#   node-bin.sh                        every binary (scripts/node-image.sh)
#   node-bin.sh kube-apiserver etcd    only these (make test: the real API server the
#                                      CRD and IPAM tests run against)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=node-image/release.sh
source "$REPO_ROOT/scripts/node-image/release.sh"

ALL="$K8S_CMDS etcd coredns crictl pause loopback"
want=${*:-$ALL}
for w in $want; do
	[[ " $ALL " == *" $w "* ]] || die "node-bin.sh: unknown binary '$w'" "choose from: $ALL"
done
wanted() { [[ " $want " == *" $1 "* ]]; }
[ "$K8S_VERSION" = "$KUBERNETES_VERSION" ] || k8s_release_check
BIN="$FLATNET_CACHE/node-bin/$K8S_VERSION-$(go env GOVERSION)"
mkdir -p "$BIN"
other_release=0
[ "$K8S_VERSION" = "$KUBERNETES_VERSION" ] || other_release=1
# Another release: its kubeadm names the etcd, CoreDNS and pause it runs with.
if [ "$other_release" = 1 ] && { wanted etcd || wanted coredns || wanted pause; }; then
	want="kubeadm $want"
fi
K8S_MODULE=$(k8s_module_dir)

# The default release's kubectl is the tools' (scripts/tools.sh): the same module,
# flags and Go, so the machine's copy of it is this binary, not another link.
if [ "$other_release" = 0 ] && wanted kubectl && [ ! -x "$BIN/kubectl" ] &&
	reuse_build kubectl "$(tool_key "$REPO_ROOT/tools" k8s.io/kubernetes/cmd/kubectl -ldflags "$(k8s_ldflags)")" "$BIN/kubectl"; then
	info "kubectl $K8S_VERSION: the tools' build"
fi
# Kubernetes' commands in one `go build`: one load of the package graph, every
# package compiled once and the binaries linked side by side.
missing=()
for cmd in $K8S_CMDS; do
	wanted "$cmd" || continue
	if [ -x "$BIN/$cmd" ]; then
		info "$cmd $K8S_VERSION: cached"
	else
		missing+=("$cmd")
	fi
done
# etcd, CoreDNS and crictl are modules of their own: resolved (network) and built in
# the background while Kubernetes compiles (for another release, etcd and CoreDNS
# wait for its kubeadm, which names their versions).
pids=()
pinned() { # go_build_pinned's arguments: built in the background
	(CGO_ENABLED=0 go_build_pinned "$@") &
	pids+=("$!:$1")
}
etcd_coredns() {
	wanted etcd && pinned etcd go.etcd.io/etcd/server/v3 "${ETCD_VERSION}" go.etcd.io/etcd/server/v3 "$BIN/etcd" -ldflags "-s -w"
	# CoreDNS with the plugins an offline cluster can use (scripts/node-image/coredns).
	wanted coredns && PINNED_MAIN="$REPO_ROOT/scripts/node-image/coredns/main.go" \
		pinned coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns "$BIN/coredns" -ldflags "-s -w"
	return 0
}
[ "$other_release" = 1 ] || etcd_coredns
wanted crictl && pinned crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl "$BIN/crictl" \
	-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
if [ ${#missing[@]} -gt 0 ]; then
	info "${missing[*]} $K8S_VERSION: building (cold: minutes; cached after)"
	rm -rf "$BIN/.build"
	mkdir -p "$BIN/.build"
	(cd "$K8S_MODULE" && CGO_ENABLED=0 run_logged "$BIN/build.log" gobuild build -trimpath \
		-ldflags "$(KUBERNETES_VERSION=$K8S_VERSION k8s_ldflags)" -o "$BIN/.build/" "${missing[@]/#/k8s.io/kubernetes/cmd/}")
	mv "$BIN/.build"/* "$BIN/"
	rmdir "$BIN/.build"
fi
if [ "$other_release" = 1 ]; then
	if wanted kubeadm; then
		k8s_release_images "$BIN/kubeadm"
		info "kubeadm $K8S_VERSION lists etcd $ETCD_VERSION, CoreDNS $COREDNS_VERSION, pause $PAUSE_VERSION"
	fi
	etcd_coredns
fi
for p in "${pids[@]}"; do
	wait "${p%%:*}" || die "building ${p#*:} failed (output above)"
done
if wanted pause; then
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$BIN/pause.log" go build -trimpath -ldflags "-s -w" \
		-o "$BIN/pause" ./scripts/node-image/pause)
fi
# Not cached by file: go build is a no-op lookup when go.mod's version is unchanged.
if wanted loopback; then
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$BIN/loopback.log" go build -trimpath -ldflags "-s -w" \
		-o "$BIN/loopback" github.com/containernetworking/plugins/plugins/main/loopback)
fi
echo "$BIN"
