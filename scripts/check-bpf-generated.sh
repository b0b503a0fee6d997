#!/usr/bin/env bash
# Regenerates dataplane/bpf's bpf2go output into a temp dir, with the exact
# //go:generate line of dataplane/bpf/doc.go, and fails if the committed files differ.
# Needs clang (apt-get install -y clang llvm); the headers it compiles against are
# vendored in dataplane/bpf/c/third_party.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pkg="$root/dataplane/bpf"
command -v clang >/dev/null || { echo "check-bpf-generated: clang missing (apt-get install -y clang llvm)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$pkg/c" "$tmp/c"
bpf2go=$(cd "$root" && go tool -n bpf2go)
args=$(sed -n 's|^//go:generate go tool bpf2go ||p' "$pkg/doc.go")
[ -n "$args" ] || { echo "check-bpf-generated: no bpf2go //go:generate line in $pkg/doc.go" >&2; exit 1; }

# Run as go generate would: in the package directory, with PWD and GOPACKAGE set.
(cd "$tmp" && export PWD="$tmp" GOPACKAGE=bpf GOFILE=doc.go && eval "\"$bpf2go\" $args") >"$tmp/log" 2>&1 || {
	cat "$tmp/log" >&2; echo "check-bpf-generated: bpf2go failed" >&2; exit 1; }

status=0
for f in datapath_bpfel.go datapath_bpfel.o; do
	if ! cmp -s "$tmp/$f" "$pkg/$f"; then
		echo "check-bpf-generated: $f is not current: run 'go generate ./dataplane/bpf' and commit" >&2
		status=1
	fi
done
[ $status -eq 0 ] && echo "check-bpf-generated: dataplane/bpf generated files are current"
exit $status
