#!/usr/bin/env bash
# Checks flatnet's two Go modules, and fails naming the module and the command
# that fixes it:
#   - each is tidy: its go.mod and go.sum are what `go mod tidy` writes;
#   - tools/go.mod builds Kubernetes at KUBERNETES_VERSION of versions.env, with
#     every staging module it replaces pinned to that release's v0.x tag;
#   - go.mod's Kubernetes staging modules (client-go, api, ...) are at that same
#     tag, so flatnet talks to the API server it is tested against, and kind is
#     KIND_VERSION. (The ginkgo CLI needs no check: it is a `tool` of go.mod, so it
#     is always the version of the library the suites import.)
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

[ $status -eq 0 ] && echo "check-modules: go.mod and tools/go.mod are tidy and pin the versions of versions.env"
exit $status
