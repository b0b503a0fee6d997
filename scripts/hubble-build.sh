#!/usr/bin/env bash
# Usage: hubble-build.sh hubble|hubble-relay OUT
# Builds one of Hubble's upstream programs, the `hubble` CLI or `hubble-relay`
# (github.com/cilium/cilium/hubble, .../hubble-relay), at HUBBLE_VERSION from the
# Go module proxy, in the tools module tools/hubble: its own module because
# cilium's go.mod needs replace directives that a requiring module must repeat,
# and because Cilium's dependencies stay out of flatnet's module. Static
# (CGO_ENABLED=0, osusergo), stamped with the version and revision the way
# Cilium's Makefile stamps them. Skips the build when OUT was built from the same
# inputs (tools/hubble/go.mod and go.sum, this script, the Go version), here or in
# another clone on this machine (lib.sh's reuse_build).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ $# -eq 2 ] || die "usage: hubble-build.sh hubble|hubble-relay OUT"
name=$1 out=$(realpath -m "$2")
case $name in
hubble | hubble-relay) ;;
*) die "hubble-build.sh: unknown program '$name'" "build 'hubble' (the CLI) or 'hubble-relay'" ;;
esac
pkg="github.com/cilium/cilium/$name"
dir="$REPO_ROOT/tools/hubble"

key=$(cd "$REPO_ROOT" && {
	echo "$name"
	go env GOVERSION
	sha256sum tools/hubble/go.mod tools/hubble/go.sum scripts/hubble-build.sh
} | sha256sum | cut -c1-16)
if reuse_build "$name" "$key" "$out"; then
	info "$name $HUBBLE_VERSION: up to date"
	exit 0
fi

# The revision and its commit time, as `git show -s --format='%h %aI'` gives
# Cilium's Makefile: the module proxy records both for the tag.
dl=$(cd "$dir" && go mod download -json "github.com/cilium/cilium@$HUBBLE_VERSION") ||
	die "cannot download github.com/cilium/cilium@$HUBBLE_VERSION from the module proxy ($(go env GOPROXY))"
rev=$(sed -n 's/.*"Hash": "\([0-9a-f]\{10\}\).*/\1/p' <<<"$dl")
info_file=$(sed -n 's/.*"Info": "\(.*\)".*/\1/p' <<<"$dl")
when=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "$info_file")
[ -n "$rev" ] && [ -n "$when" ] || die "no revision or time for github.com/cilium/cilium@$HUBBLE_VERSION in the proxy's answer" "$dl"
# pkg/version parses "<version> <revision> <time>" (hubble-relay reports it);
# the CLI has its own three variables.
ldflags="-s -w -X 'github.com/cilium/cilium/pkg/version.ciliumVersion=${HUBBLE_VERSION#v} $rev $when'"
ldflags+=" -X github.com/cilium/cilium/hubble/pkg.Version=$HUBBLE_VERSION -X github.com/cilium/cilium/hubble/pkg.GitHash=$rev"

info "$name $HUBBLE_VERSION: building $pkg (cold: several minutes on 2 cores; cached after)"
t0=$SECONDS
mkdir -p "$(dirname "$out")"
rm -f "$out.inputs"
(cd "$dir" && CGO_ENABLED=0 run_logged "$OUT_DIR/$name-build.log" nice -n 10 \
	env "${GOBUILD_ENV[@]}" go build -trimpath -tags osusergo -ldflags "$ldflags" -o "$out" "$pkg")
echo "$key" >"$out.inputs"
cache_put "$name" "$key" "$out"
info "$name $HUBBLE_VERSION: built in $((SECONDS - t0))s, $(du -m "$out" | cut -f1) MB"
