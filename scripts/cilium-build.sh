#!/usr/bin/env bash
# Builds Cilium $CILIUM_VERSION (versions.env) from the Go module proxy, the way
# upstream's Makefiles do (CGO off, tags osusergo, the version stamped), from the
# module tools/cilium/go.mod (its replace lines say why each is there):
#   cilium-agent, cilium-dbg, cilium-health, cilium-health-responder, cilium-cni,
#   cilium-mount, cilium-sysctlfix (the agent image's programs) and
#   cilium-operator-generic (tags ipam_provider_operator, as upstream's generic
#   operator image).
# Output: $FLATNET_CACHE/cilium/<hash of the inputs>/, laid out as upstream's agent
# image lays out its files: the programs in /usr/bin (cilium-dbg also as cilium,
# which the chart's probes run), cilium-cni in /opt/cni/bin, CNI's loopback in
# /cni (install-plugin.sh copies both to the node), the init containers' scripts
# in /, and the bpf/ sources of the module zip in /var/lib/cilium/bpf (upstream's
# install-bpf). The operator goes to operator/usr/bin. Built only when no such
# directory is complete; prints the directory last.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOD="$REPO_ROOT/tools/cilium"
# The module tools/cilium selects must be the one versions.env pins.
selected=$(cd "$MOD" && go list -m -f '{{.Version}}' github.com/cilium/cilium)
[ "$selected" = "$CILIUM_VERSION" ] ||
	die "tools/cilium/go.mod builds github.com/cilium/cilium $selected, versions.env says $CILIUM_VERSION" \
		"run 'cd tools/cilium && go get github.com/cilium/cilium@$CILIUM_VERSION && go mod tidy'"

# The programs: OUTPUT-NAME PACKAGE EXTRA-TAGS.
PROGRAMS=(
	"cilium-agent github.com/cilium/cilium/daemon -"
	"cilium-dbg github.com/cilium/cilium/cilium-dbg -"
	"cilium-health github.com/cilium/cilium/cilium-health -"
	"cilium-health-responder github.com/cilium/cilium/cilium-health/responder -"
	"cilium-cni github.com/cilium/cilium/plugins/cilium-cni -"
	"cilium-mount github.com/cilium/cilium/tools/mount -"
	"cilium-sysctlfix github.com/cilium/cilium/tools/sysctlfix -"
	"cilium-operator-generic github.com/cilium/cilium/operator ipam_provider_operator"
)
# Upstream stamps "<version> <git revision> <commit date>" and cilium-dbg status
# parses those fields; a module zip has no git revision, so the module version
# stands in for it and the module's publication time for the date.
published=$(cd "$MOD" && go list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' github.com/cilium/cilium)
LDFLAGS="-s -w -X 'github.com/cilium/cilium/pkg/version.ciliumVersion=${CILIUM_VERSION#v} $CILIUM_VERSION ${published:-unknown}'"

inputs_hash() {
	{
		go env GOVERSION GOARCH
		echo "$CILIUM_VERSION $LDFLAGS"
		printf '%s\n' "${PROGRAMS[@]}"
		sha256sum <"$0"
		# Only the loopback plugin comes from flatnet's go.mod: its version, not all of
		# go.sum, so a module added to flatnet does not rebuild Cilium (~25 min).
		(cd "$REPO_ROOT" && go list -m -f '{{.Path}} {{.Version}} {{.Sum}}' github.com/containernetworking/plugins)
		cd "$MOD" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
	} | sha256sum | cut -c1-16
}

OUT="$FLATNET_CACHE/cilium/$(inputs_hash)"
if [ -f "$OUT/.complete" ]; then
	info "cilium $CILIUM_VERSION binaries: cached ($OUT)"
	echo "$OUT"
	exit 0
fi

step "cilium $CILIUM_VERSION: building ${#PROGRAMS[@]} programs (cold: ~25 min on 2 busy cores; cached after)"
rm -rf "$OUT" && mkdir -p "$OUT/usr/bin" "$OUT/opt/cni/bin" "$OUT/cni" "$OUT/var/lib/cilium" "$OUT/operator/usr/bin"
for p in "${PROGRAMS[@]}"; do
	read -r name pkg tags <<<"$p"
	tags=osusergo$([ "$tags" = - ] || echo ",$tags")
	dst="$OUT/usr/bin/$name"
	case $name in cilium-cni) dst="$OUT/opt/cni/bin/$name" ;; cilium-operator-*) dst="$OUT/operator/usr/bin/$name" ;; esac
	info "cilium: $name ($pkg, tags $tags)"
	(cd "$MOD" && CGO_ENABLED=0 run_logged "$OUT.build.log" \
		nice -n 10 go build -trimpath -tags "$tags" -ldflags "$LDFLAGS" -o "$dst" "$pkg")
done
ln -s cilium-dbg "$OUT/usr/bin/cilium"
# CNI's loopback plugin at the version flatnet's own module pins (upstream's image
# has v1.9.1 of the same plugin).
info "cilium: loopback (github.com/containernetworking/plugins, flatnet's go.mod)"
(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT.build.log" \
	nice -n 10 go build -trimpath -ldflags "-s -w" -o "$OUT/cni/loopback" github.com/containernetworking/plugins/plugins/main/loopback)

# bpf/: the datapath's C sources, which the agent compiles with clang at run time,
# at the path it reads them from (upstream's install-bpf leaves out the tests).
src=$(cd "$MOD" && go list -m -f '{{.Dir}}' github.com/cilium/cilium)
[ -n "$src" ] && [ -d "$src/bpf" ] || die "no bpf/ in the module of github.com/cilium/cilium@$CILIUM_VERSION ($src)"
(cd "$src" && find bpf -type f ! -path 'bpf/tests/*' ! -path 'bpf/complexity-tests/*' ! -path 'bpf/custom/*' \
	! -name Makefile ! -name Makefile.bpf ! -name .gitignore -print0 |
	xargs -0 -I{} install -D -m 0644 {} "$OUT/var/lib/cilium/{}")
# The init containers' scripts, where upstream's image has them.
install -m 0755 "$src/images/cilium/init-container.sh" "$src/plugins/cilium-cni/install-plugin.sh" \
	"$src/plugins/cilium-cni/cni-uninstall.sh" "$OUT/"
touch "$OUT/.complete"
info "cilium $CILIUM_VERSION: agent's programs $(du -shL "$OUT/usr/bin" | cut -f1), operator $(du -sh "$OUT/operator" | cut -f1), in $OUT"
echo "$OUT"
