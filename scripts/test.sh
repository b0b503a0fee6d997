#!/usr/bin/env bash
# `make test`: every Go test of flatnet's module (tools/ holds no code) on the real
# kernel (netns, veth, BPF programs, nftables), as root, after go vet and the checks
# that committed files are current (go.mod/go.sum, bpf2go output). Privileged tests
# may not skip here (FLATNET_REQUIRE_PRIVILEGED), so a green run always means they ran.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "make test needs root: its tests create network namespaces, veth pairs and BPF programs" \
	"run it as root (sudo make test)"
# What the tests drive besides the kernel: nft for drop rules, ip for debugging
# output, clang/llvm to prove the committed BPF objects are current, chromium to
# render the HTML report.
apt_install nftables iproute2 clang llvm chromium
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
modprobe -q nf_tables 2>/dev/null || true

# The real kube-apiserver and etcd the CRD, IPAM and policy-set tests run against
# (built once into the cache the node image uses too, so make e2e reuses them).
step "kube-apiserver and etcd for the API server tests"
KUBEBUILDER_ASSETS=$(bash "$REPO_ROOT/scripts/node-bin.sh" kube-apiserver etcd | tail -n 1)
export KUBEBUILDER_ASSETS FLATNET_REQUIRE_APISERVER=1

# The upstream hubble CLI, which the Observer's tests drive (they may not skip here).
step "hubble CLI $HUBBLE_VERSION for the Observer tests"
bash "$REPO_ROOT/scripts/hubble-build.sh" hubble "$BIN_DIR/hubble"
export FLATNET_HUBBLE_CLI="$BIN_DIR/hubble" FLATNET_REQUIRE_HUBBLE_CLI=1

cd "$REPO_ROOT"
step "go vet"
go vet ./...
go vet -tags e2e ./suites/...
step "Go modules: go.mod and tools/go.mod tidy, at the versions of versions.env"
bash scripts/check-modules.sh
if [ -f scripts/check-bpf-generated.sh ]; then
	step "BPF objects: committed output matches a fresh bpf2go run"
	bash scripts/check-bpf-generated.sh
fi
step "go test (FLATNET_REQUIRE_PRIVILEGED=1)"
FLATNET_REQUIRE_PRIVILEGED=1 go test -count=1 -timeout 20m ./... 2>&1 | tee "$OUT_DIR/test.log"
