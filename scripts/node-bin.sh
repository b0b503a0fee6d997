#!/usr/bin/env bash
# Builds the node's binaries from the Go module proxy into the flatnet cache, each
# once: Kubernetes' own (version ldflags, from the k8s.io/kubernetes module pinned in
# tools/go.mod), etcd, CoreDNS and crictl at the versions in versions.env, and a pause of
# our own. Prints the directory as the last line of stdout.
#
#   node-bin.sh                        every binary (scripts/node-image.sh)
#   node-bin.sh kube-apiserver etcd    only these (make test: the real API server the
#                                      CRD and IPAM tests run against)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="$FLATNET_CACHE/node-bin/$KUBERNETES_VERSION-$(go env GOVERSION)"
mkdir -p "$BIN"
K8S_CMDS="kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy"
ALL="$K8S_CMDS etcd coredns crictl pause"
want=${*:-$ALL}
for w in $want; do
	[[ " $ALL " == *" $w "* ]] || die "node-bin.sh: unknown binary '$w'" "choose from: $ALL"
done
wanted() { [[ " $want " == *" $1 "* ]]; }

# Kubernetes' commands in one `go build`: one load of the package graph, every
# package compiled once and the binaries linked side by side.
missing=()
for cmd in $K8S_CMDS; do
	wanted "$cmd" || continue
	if [ -x "$BIN/$cmd" ]; then
		info "$cmd $KUBERNETES_VERSION: cached"
	else
		missing+=("$cmd")
	fi
done
# etcd, CoreDNS and crictl are modules of their own: resolved (network) and built in
# the background while Kubernetes compiles.
pids=()
pinned() { # go_build_pinned's arguments: built in the background
	(CGO_ENABLED=0 go_build_pinned "$@") &
	pids+=("$!:$1")
}
wanted etcd && pinned etcd go.etcd.io/etcd/server/v3 "${ETCD_VERSION}" go.etcd.io/etcd/server/v3 "$BIN/etcd" -ldflags "-s -w"
wanted coredns && pinned coredns github.com/coredns/coredns "$COREDNS_VERSION" github.com/coredns/coredns "$BIN/coredns" -ldflags "-s -w"
wanted crictl && pinned crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl "$BIN/crictl" \
	-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
if [ ${#missing[@]} -gt 0 ]; then
	info "${missing[*]} $KUBERNETES_VERSION: building (cold: minutes; cached after)"
	rm -rf "$BIN/.build"
	mkdir -p "$BIN/.build"
	(cd "$REPO_ROOT/tools" && CGO_ENABLED=0 run_logged "$BIN/build.log" go build -trimpath \
		-ldflags "$(k8s_ldflags)" -o "$BIN/.build/" "${missing[@]/#/k8s.io/kubernetes/cmd/}")
	mv "$BIN/.build"/* "$BIN/"
	rmdir "$BIN/.build"
fi
for p in "${pids[@]}"; do
	wait "${p%%:*}" || die "building ${p#*:} failed (output above)"
done
if wanted pause; then
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$BIN/pause.log" go build -trimpath -ldflags "-s -w" \
		-o "$BIN/pause" ./scripts/node-image/pause)
fi
echo "$BIN"
