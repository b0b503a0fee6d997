#!/usr/bin/env bash
# Builds Cilium $CILIUM_VERSION (versions.env) from the Go module proxy, the way
# upstream's Makefiles do (CGO off, tags osusergo, the version stamped), from the
# module tools/cilium/go.mod (its replace lines say why each is there):
#   cilium-agent, cilium-dbg, cilium-health, cilium-health-responder, cilium-cni,
#   cilium-mount, cilium-sysctlfix (the agent image's programs) and
#   cilium-operator-generic (tags ipam_provider_operator, as upstream's generic
#   operator image).
# Three cached steps under $FLATNET_CACHE/cilium, each keyed only on its own inputs,
# so a change to one step never redoes a slower one:
#   programs/<key>     the Cilium programs (~25 min cold on 2 busy cores). Key: Go's
#                      version and target, the Cilium version, ldflags, each
#                      program's package and tags, the build command itself and the
#                      module tools/cilium.
#   cni-plugins/<key>  CNI's plugins from flatnet's go.mod (seconds): loopback for the
#                      agent image, portmap for the nodes (cni.chainingMode=portmap,
#                      hostPort without kube-proxy replacement). Key: Go's version,
#                      the plugins module's version and sum, the plugin list, the
#                      build command.
#   <key>              the tree the image and the nodes take (hard links, seconds),
#                      laid out as upstream's agent image lays out its files: the
#                      programs in /usr/bin (cilium-dbg also as cilium, which the
#                      chart's probes run), cilium-cni in /opt/cni/bin, loopback in
#                      /cni (install-plugin.sh copies both to the node), the init
#                      containers' scripts in /, and the bpf/ sources of the module
#                      zip in /var/lib/cilium/bpf (upstream's install-bpf). Beside
#                      it, outside the image: operator/usr/bin (the operator image)
#                      and node/opt/cni/bin (what goes on each node: portmap).
#                      Key: both keys above and this script.
# Prints the tree's directory last.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MOD="$REPO_ROOT/tools/cilium"
CACHE="$FLATNET_CACHE/cilium"
# The module tools/cilium selects must be the one versions.env pins.
selected=$(cd "$MOD" && go list -m -f '{{.Version}}' github.com/cilium/cilium)
[ "$selected" = "$CILIUM_VERSION" ] ||
	die "tools/cilium/go.mod builds github.com/cilium/cilium $selected, versions.env says $CILIUM_VERSION" \
		"run 'cd tools/cilium && go get github.com/cilium/cilium@$CILIUM_VERSION && go mod tidy'"

# The programs: OUTPUT-PATH PACKAGE EXTRA-TAGS, the path as upstream's images have it.
PROGRAMS=(
	"usr/bin/cilium-agent github.com/cilium/cilium/daemon -"
	"usr/bin/cilium-dbg github.com/cilium/cilium/cilium-dbg -"
	"usr/bin/cilium-health github.com/cilium/cilium/cilium-health -"
	"usr/bin/cilium-health-responder github.com/cilium/cilium/cilium-health/responder -"
	"opt/cni/bin/cilium-cni github.com/cilium/cilium/plugins/cilium-cni -"
	"usr/bin/cilium-mount github.com/cilium/cilium/tools/mount -"
	"usr/bin/cilium-sysctlfix github.com/cilium/cilium/tools/sysctlfix -"
	"operator/usr/bin/cilium-operator-generic github.com/cilium/cilium/operator ipam_provider_operator"
)
# CNI's plugins: OUTPUT-PATH PACKAGE, at the version flatnet's own go.mod pins
# (upstream's agent image has v1.9.1 of loopback).
PLUGINS_MOD=github.com/containernetworking/plugins
PLUGINS=(
	"cni/loopback $PLUGINS_MOD/plugins/main/loopback"
	"node/opt/cni/bin/portmap $PLUGINS_MOD/plugins/meta/portmap"
)
# Upstream stamps "<version> <git revision> <commit date>" and cilium-dbg status
# parses those fields; a module zip has no git revision, so the module version
# stands in for it and the module's publication time for the date.
published=$(cd "$MOD" && go list -m -f '{{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' github.com/cilium/cilium)
LDFLAGS="-s -w -X 'github.com/cilium/cilium/pkg/version.ciliumVersion=${CILIUM_VERSION#v} $CILIUM_VERSION ${published:-unknown}'"

# build_programs DIR: the Cilium programs into DIR, from tools/cilium.
build_programs() {
	local p dst pkg tags
	for p in "${PROGRAMS[@]}"; do
		read -r dst pkg tags <<<"$p"
		tags=osusergo$([ "$tags" = - ] || echo ",$tags")
		info "cilium: $(basename "$dst") ($pkg, tags $tags)"
		(cd "$MOD" && CGO_ENABLED=0 run_logged "$1.build.log" \
			nice -n 10 go build -trimpath -tags "$tags" -ldflags "$LDFLAGS" -o "$1/$dst" "$pkg")
	done
}

# build_plugins DIR: CNI's plugins into DIR, from flatnet's go.mod.
build_plugins() {
	local p dst pkg
	for p in "${PLUGINS[@]}"; do
		read -r dst pkg <<<"$p"
		info "cni plugin: $(basename "$dst") ($pkg)"
		(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$1.build.log" \
			nice -n 10 go build -trimpath -ldflags "-s -w" -o "$1/$dst" "$pkg")
	done
}

# cached WHAT DIR BUILD: runs BUILD into DIR unless DIR is complete; a failed or
# interrupted build leaves no complete DIR.
cached() {
	local what=$1 dir=$2 build=$3
	if [ -f "$dir/.complete" ]; then
		info "$what: cached ($dir)"
		return
	fi
	rm -rf "$dir" && mkdir -p "$dir"
	"$build" "$dir"
	touch "$dir/.complete"
}

key() { sha256sum | cut -c1-16; }
programs_key=$(
	go env GOVERSION GOOS GOARCH GOFLAGS
	echo "$CILIUM_VERSION $LDFLAGS"
	printf '%s\n' "${PROGRAMS[@]}"
	declare -f build_programs
	cd "$MOD" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
) && programs_key=$(key <<<"$programs_key")
plugins_key=$(
	go env GOVERSION GOOS GOARCH GOFLAGS
	cd "$REPO_ROOT" && go list -m -f '{{.Path}} {{.Version}} {{.Sum}}' "$PLUGINS_MOD"
	printf '%s\n' "${PLUGINS[@]}"
	declare -f build_plugins
) && plugins_key=$(key <<<"$plugins_key")
PROGRAMS_DIR="$CACHE/programs/$programs_key"
PLUGINS_DIR="$CACHE/cni-plugins/$plugins_key"
OUT="$CACHE/$(sha256sum <"$0" | cat - <(echo "$programs_key $plugins_key") | key)"

if [ -f "$OUT/.complete" ]; then
	info "cilium $CILIUM_VERSION tree: cached ($OUT)"
	echo "$OUT"
	exit 0
fi
[ -f "$PROGRAMS_DIR/.complete" ] ||
	step "cilium $CILIUM_VERSION: building ${#PROGRAMS[@]} programs (cold: ~25 min on 2 busy cores; cached after)"
cached "cilium $CILIUM_VERSION programs" "$PROGRAMS_DIR" build_programs
cached "cni plugins ($PLUGINS_MOD)" "$PLUGINS_DIR" build_plugins

# assemble_tree DIR: the programs and plugins (hard links into the cache), bpf/ and
# the init containers' scripts, as upstream's image has them.
assemble_tree() {
	local src
	cp -al "$PROGRAMS_DIR/." "$PLUGINS_DIR/." "$1/"
	rm -f "$1/.complete"
	ln -s cilium-dbg "$1/usr/bin/cilium"
	# bpf/: the datapath's C sources, which the agent compiles with clang at run time,
	# at the path it reads them from (upstream's install-bpf leaves out the tests).
	src=$(cd "$MOD" && go list -m -f '{{.Dir}}' github.com/cilium/cilium)
	[ -n "$src" ] && [ -d "$src/bpf" ] || die "no bpf/ in the module of github.com/cilium/cilium@$CILIUM_VERSION ($src)"
	(cd "$src" && find bpf -type f ! -path 'bpf/tests/*' ! -path 'bpf/complexity-tests/*' ! -path 'bpf/custom/*' \
		! -name Makefile ! -name Makefile.bpf ! -name .gitignore -print0 |
		xargs -0 -I{} install -D -m 0644 {} "$1/var/lib/cilium/{}")
	# The init containers' scripts, where upstream's image has them.
	install -m 0755 "$src/images/cilium/init-container.sh" "$src/plugins/cilium-cni/install-plugin.sh" \
		"$src/plugins/cilium-cni/cni-uninstall.sh" "$1/"
}
cached "cilium $CILIUM_VERSION tree" "$OUT" assemble_tree
info "cilium $CILIUM_VERSION: agent's programs $(du -shL "$OUT/usr/bin" | cut -f1), operator $(du -sh "$OUT/operator" | cut -f1), in $OUT"
echo "$OUT"
