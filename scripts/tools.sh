#!/usr/bin/env bash
# Builds the tools pinned in go.mod (kind, kubectl, ginkgo) into bin/.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_tool() { # NAME PKG [go build args]
	local name=$1 pkg=$2
	shift 2
	info "tool $name: building $pkg"
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/tools.log" go build -trimpath -o "$BIN_DIR/$name" "$@" "$pkg")
}
build_tool kind sigs.k8s.io/kind -ldflags "-s -w"
build_tool kubectl k8s.io/kubernetes/cmd/kubectl -ldflags "$(k8s_ldflags)"
build_tool ginkgo github.com/onsi/ginkgo/v2/ginkgo -ldflags "-s -w"
info "tools: $("$BIN_DIR/kind" version | cut -d' ' -f1-2), kubectl $("$BIN_DIR/kubectl" version --client -o json | grep -m1 gitVersion | tr -d ' ",' | cut -d: -f2), ginkgo $("$BIN_DIR/ginkgo" version | awk '{print $NF}')"
