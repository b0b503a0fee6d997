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

n=0
for cmd in $K8S_CMDS; do
	n=$((n + 1))
	wanted "$cmd" || continue
	if [ -x "$BIN/$cmd" ]; then
		info "[$n/7] $cmd $KUBERNETES_VERSION: cached"
		continue
	fi
	info "[$n/7] $cmd $KUBERNETES_VERSION: building (the first one takes longest)"
	(cd "$REPO_ROOT/tools" && CGO_ENABLED=0 run_logged "$BIN/build.log" go build -trimpath \
		-ldflags "$(k8s_ldflags)" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
	mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done
wanted etcd && CGO_ENABLED=0 go_build_pinned etcd go.etcd.io/etcd/server/v3 "${ETCD_VERSION}" \
	go.etcd.io/etcd/server/v3 "$BIN/etcd" -ldflags "-s -w"
wanted coredns && CGO_ENABLED=0 go_build_pinned coredns github.com/coredns/coredns "$COREDNS_VERSION" \
	github.com/coredns/coredns "$BIN/coredns" -ldflags "-s -w"
wanted crictl && CGO_ENABLED=0 go_build_pinned crictl sigs.k8s.io/cri-tools "$CRICTL_VERSION" \
	sigs.k8s.io/cri-tools/cmd/crictl "$BIN/crictl" \
	-ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"
if wanted pause; then
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$BIN/pause.log" go build -trimpath -ldflags "-s -w" \
		-o "$BIN/pause" ./scripts/node-image/pause)
fi
echo "$BIN"
