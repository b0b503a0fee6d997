#!/usr/bin/env bash
# Builds the tools into bin/: kind and ginkgo from the main module (go.mod `tool`
# lines, so the ginkgo CLI is the version of the library the suites import and kind
# the version of the library they drive), kubectl from the tools module
# (tools/go.mod: k8s.io/kubernetes and its staging modules), the hubble CLI from
# tools/hubble/go.mod (cilium at HUBBLE_VERSION; scripts/hubble-build.sh, which
# skips it when its inputs are unchanged).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# build_tool NAME MODULE-DIR PKG [go build args]: skipped when bin/NAME was built from
# the same module requirements (the tools are pinned modules, not this tree's code),
# copied when another clone on this machine built it from them (reuse_build).
build_tool() {
	local name=$1 dir=$2 pkg=$3 key
	shift 3
	key=$(tool_key "$dir" "$pkg" "$@")
	reuse_build "$name" "$key" "$BIN_DIR/$name" && return 0
	info "tool $name: building $pkg"
	rm -f "$BIN_DIR/$name.inputs"
	(cd "$dir" && CGO_ENABLED=0 run_logged "$OUT_DIR/tools.log" gobuild build -trimpath -o "$BIN_DIR/$name" "$@" "$pkg")
	echo "$key" >"$BIN_DIR/$name.inputs"
	cache_put "$name" "$key" "$BIN_DIR/$name"
}
build_tool kind "$REPO_ROOT" sigs.k8s.io/kind -ldflags "-s -w"
build_tool kubectl "$REPO_ROOT/tools" k8s.io/kubernetes/cmd/kubectl -ldflags "$(k8s_ldflags)"
build_tool ginkgo "$REPO_ROOT" github.com/onsi/ginkgo/v2/ginkgo -ldflags "-s -w"
bash "$REPO_ROOT/scripts/hubble-build.sh" hubble "$BIN_DIR/hubble"
info "tools: $("$BIN_DIR/kind" version | cut -d' ' -f1-2), kubectl $("$BIN_DIR/kubectl" version --client -o json | grep -m1 gitVersion | tr -d ' ",' | cut -d: -f2), ginkgo $("$BIN_DIR/ginkgo" version | awk '{print $NF}'), hubble $("$BIN_DIR/hubble" version | cut -d' ' -f2)"
