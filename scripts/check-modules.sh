#!/usr/bin/env bash
# Checks flatnet's three Go modules, and fails naming the module and the command
# that fixes it:
#   - each is tidy: its go.mod and go.sum are what `go mod tidy` writes;
#   - tools/go.mod builds Kubernetes at KUBERNETES_VERSION of versions.env, with
#     every staging module it replaces pinned to that release's v0.x tag;
#   - go.mod's Kubernetes staging modules (client-go, api, ...) are at that same
#     tag, so flatnet talks to the API server it is tested against, and kind is
#     KIND_VERSION. (The ginkgo CLI needs no check: it is a `tool` of go.mod, so it
#     is always the version of the library the suites import.)
#   - tools/hubble/go.mod builds the hubble CLI and hubble-relay from
#     github.com/cilium/cilium at HUBBLE_VERSION, replaces exactly what cilium's
#     go.mod replaces, and selects every module cilium requires at cilium's
#     version: the programs are built as upstream builds them; go.mod's
#     github.com/cilium/cilium (the Hubble API), if any, is that same tag.
# Run by make test (scripts/test.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../versions.env
source "$root/versions.env"
staging="v0.${KUBERNETES_VERSION#v1.}"
status=0
fail() {
	echo "check-modules: $*" >&2
	status=1
}

# tidy DIR NAME FIX: go mod tidy -diff in DIR (prints the diff, changes nothing).
tidy() {
	local dir=$1 name=$2 fix=$3 out
	if out=$(cd "$root/$dir" && go mod tidy -diff 2>&1); then
		return 0
	fi
	printf '%s\n' "$out" >&2
	if grep -q '^diff current/' <<<"$out"; then
		fail "$name is not tidy (diff above): run '$fix' and commit go.mod and go.sum"
	else
		fail "$name: 'go mod tidy -diff' failed (output above)"
	fi
}
tidy . go.mod "go mod tidy"
tidy tools tools/go.mod "cd tools && go mod tidy"
tidy tools/hubble tools/hubble/go.mod "cd tools/hubble && go mod tidy"

# selected DIR MODULE: the version of MODULE that DIR's module builds with.
selected() {
	(cd "$root/$1" && go list -m -f '{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}' "$2")
}

v=$(selected tools k8s.io/kubernetes)
[ "$v" = "$KUBERNETES_VERSION" ] ||
	fail "tools/go.mod builds k8s.io/kubernetes $v, versions.env says $KUBERNETES_VERSION:" \
		"run 'cd tools && go get k8s.io/kubernetes@$KUBERNETES_VERSION', set its replace lines to $staging, then 'cd tools && go mod tidy'"
# The staging modules: what tools/go.mod replaces (every line inside or outside a
# replace block reads "OLD => NEW VERSION").
replaced=$(awk '{sub(/^replace /, "")} $2 == "=>" {print $1, $4}' "$root/tools/go.mod")
[ -n "$replaced" ] || fail "tools/go.mod replaces no staging module: k8s.io/kubernetes needs each one pinned to $staging"
bad=$(awk -v want="$staging" '$2 != want {printf " %s@%s", $1, $2}' <<<"$replaced")
[ -z "$bad" ] ||
	fail "tools/go.mod replaces staging modules by other than $staging (Kubernetes $KUBERNETES_VERSION):$bad;" \
		"set those replace lines to $staging, then 'cd tools && go mod tidy'"

# The modules flatnet's own packages (and their tests, suites included) link:
# each staging module among them at the same tag.
linked=$(cd "$root" && for tags in "" e2e; do
	go list -tags "$tags" -deps -test -f '{{with .Module}}{{.Path}} {{.Version}}{{end}}' ./...
done | sort -u)
bad=$(awk -v want="$staging" 'NR == FNR {staging[$1] = 1; next} ($1 in staging) && $2 != want {printf " %s@%s", $1, want}' \
	<(echo "$replaced") <(echo "$linked"))
[ -z "$bad" ] ||
	fail "go.mod selects Kubernetes staging modules at other than $staging (Kubernetes $KUBERNETES_VERSION):" \
		"run 'go get$bad && go mod tidy'"

v=$(selected . sigs.k8s.io/kind)
[ "$v" = "$KIND_VERSION" ] ||
	fail "go.mod selects sigs.k8s.io/kind $v, versions.env says $KIND_VERSION: run 'go get sigs.k8s.io/kind@$KIND_VERSION && go mod tidy', or change versions.env"

v=$(selected tools/hubble github.com/cilium/cilium)
if [ "$v" != "$HUBBLE_VERSION" ]; then
	fail "tools/hubble/go.mod builds github.com/cilium/cilium $v, versions.env says HUBBLE_VERSION=$HUBBLE_VERSION:" \
		"run 'cd tools/hubble && go get -tool github.com/cilium/cilium/hubble@$HUBBLE_VERSION github.com/cilium/cilium/hubble-relay@$HUBBLE_VERSION'," \
		"copy the replace directives of that release's go.mod, then 'go mod tidy'"
elif cilium_mod=$(cd "$root/tools/hubble" && go mod download -json "github.com/cilium/cilium@$HUBBLE_VERSION" |
	sed -n 's/.*"GoMod": "\(.*\)".*/\1/p') && [ -f "$cilium_mod" ]; then
	# "OLD => NEW VERSION" of each go.mod's replace directives, and cilium's
	# requirements ("PATH VERSION" lines of its require blocks).
	replaces() { awk '{sub(/^replace /, "")} $2 == "=>" {print $1, $3, $4}' "$1" | sort; }
	diffs=$(diff <(replaces "$cilium_mod") <(replaces "$root/tools/hubble/go.mod") | grep '^[<>]' || true)
	[ -z "$diffs" ] ||
		fail "tools/hubble/go.mod's replace directives differ from cilium $HUBBLE_VERSION's go.mod ($cilium_mod):" \
			"$(tr '\n' ';' <<<"$diffs")" "make them the same (< cilium's, > ours), then 'cd tools/hubble && go mod tidy'"
	bad=$(join <(awk '/^require \(/ {r = 1; next} r && /^\)/ {r = 0} r && NF >= 2 {print $1, $2}' "$cilium_mod" | sort) \
		<(cd "$root/tools/hubble" && go list -m -f '{{.Path}} {{.Version}}' all | sort) | awk '$2 != $3 {printf " %s@%s (cilium: %s)", $1, $3, $2}')
	[ -z "$bad" ] ||
		fail "tools/hubble/go.mod selects modules at other versions than cilium $HUBBLE_VERSION requires:$bad;" \
			"remove their require lines from tools/hubble/go.mod, then 'cd tools/hubble && go mod tidy'"
else
	fail "cannot read the go.mod of github.com/cilium/cilium@$HUBBLE_VERSION from the module proxy"
fi
# (Absent from go.mod until flatnet imports the API: nothing to compare then.)
if v=$(cd "$root" && go list -m -f '{{.Version}}' github.com/cilium/cilium 2>/dev/null) && [ "$v" != "$HUBBLE_VERSION" ]; then
	fail "go.mod selects github.com/cilium/cilium (the Hubble API) $v, the hubble tools are $HUBBLE_VERSION:" \
		"run 'go get github.com/cilium/cilium@$HUBBLE_VERSION && go mod tidy', or change HUBBLE_VERSION and tools/hubble/go.mod"
fi

[ $status -eq 0 ] && echo "check-modules: go.mod, tools/go.mod and tools/hubble/go.mod are tidy and pin the versions of versions.env"
exit $status
