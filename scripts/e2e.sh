#!/usr/bin/env bash
# `make e2e`: everything, on a fresh machine or a warm one.
#   tools -> docker engine -> node image -> kind cluster -> flatnet images + deploy
#   -> every Ginkgo suite under suites/ -> JUnit + report in _artifacts/e2e
# FOCUS=/SKIP= narrow the specs (Ginkgo regexps); specs in suites/known-divergences are
# skipped (reported as skipped, with the reason) unless STRICT=1; REUSE=1 keeps the cluster for the
# next run (default: it is deleted when the run passes, kept for debugging when not).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
ART=${ARTIFACTS:-$REPO_ROOT/_artifacts/e2e}
export KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"
rm -rf "$ART"
mkdir -p "$ART"
declare -A took
phase() { # NAME CMD...
	local name=$1 t0
	shift
	t0=$(date +%s)
	"$@"
	took[$name]=$(($(date +%s) - t0))
}

phase tools bash "$REPO_ROOT/scripts/tools.sh"
phase cluster bash "$REPO_ROOT/scripts/cluster.sh" up
for s in probe-image deploy; do
	[ -x "$REPO_ROOT/scripts/$s.sh" ] && phase "$s" bash "$REPO_ROOT/scripts/$s.sh" >"$OUT_DIR/$s.out"
done
# OBSERVABILITY=1: Prometheus records the suites (make observability); with REUSE=1 it stays to look at.
[ "${OBSERVABILITY:-0}" = 1 ] && phase observability bash "$REPO_ROOT/scripts/observability.sh"

step "suites: ginkgo ${FOCUS:+--focus='$FOCUS' }${SKIP:+--skip='$SKIP' }-> $ART"
# The release the cluster runs (make e2e K8S_VERSION=...; suites/cluster checks the kubelets).
export KUBERNETES_VERSION=${K8S_VERSION:-$KUBERNETES_VERSION}
FLATNET_NODES=$(bash "$REPO_ROOT/scripts/cluster.sh" nodes | tr '\n' ' ')
export FLATNET_NODES
[ -f "$OUT_DIR/probe-image.out" ] && PROBE_IMAGE=$(tail -n 1 "$OUT_DIR/probe-image.out") && export PROBE_IMAGE
# suites/hubble runs the upstream hubble CLI that `make tools` built (tools/hubble).
export FLATNET_HUBBLE_CLI="$BIN_DIR/hubble"
# The suites are the packages with an e2e-tagged suite file; the unit tests of suites/ (report, framework
# self-test, ...) run in make test, not here, so the e2e JUnit holds only specs run against the cluster.
mapfile -t suites < <(cd "$REPO_ROOT" && grep -l '^//go:build e2e' suites/*/*_suite_test.go | xargs -n1 dirname | sort -u | sed 's|^|./|')
[ "${#suites[@]}" -gt 0 ] || die "no e2e suites found under suites/"
args=(--tags e2e --keep-going --junit-report junit.xml --output-dir "$ART" --poll-progress-after 60s)
[ -n "${FOCUS:-}" ] && args+=(--focus "$FOCUS")
[ -n "${SKIP:-}" ] && args+=(--skip "$SKIP")
if [ "${STRICT:-0}" != 1 ]; then
	# The one reader of the skip-list format (suites/skiplist), as the suites' reports use.
	known=$(cd "$REPO_ROOT" && go run ./suites/cmd/conformance skip-args --explain "skipping known divergence" suites/known-divergences) ||
		die "suites/known-divergences is not a skip list" "format: <regexp><TAB><why>"
	[ -z "$known" ] || mapfile -t -O "${#args[@]}" args <<<"$known"
fi
t0=$(date +%s)
rc=0
(cd "$REPO_ROOT" && "$BIN_DIR/ginkgo" "${args[@]}" "${suites[@]}") || rc=$?
took[suites]=$(($(date +%s) - t0))

if [ "$rc" -ne 0 ]; then
	step "suites failed: collecting logs of every node and flatnet component"
	bash "$REPO_ROOT/scripts/cluster.sh" logs "$ART/logs" >/dev/null 2>&1 || true
	"$BIN_DIR/kubectl" get pods -A -o wide >"$ART/logs/pods.txt" 2>&1 || true
	"$BIN_DIR/kubectl" get events -A --sort-by=.lastTimestamp >"$ART/logs/events.txt" 2>&1 || true
	# What the datapaths decided, with the deciding policies: every agent's kept flows.
	(cd "$REPO_ROOT" && go run ./dataplane/cmd/flatnetctl flows -o json) >"$ART/logs/flows.json" 2>"$ART/logs/flows.err" || true
fi

printf '\n  %-12s %s\n' phase seconds >&2
for k in tools cluster probe-image deploy observability suites; do
	[ -n "${took[$k]:-}" ] && printf '  %-12s %5d\n' "$k" "${took[$k]}" >&2
done
printf '  JUnit: %s\n\n' "$ART/junit.xml" >&2

if [ "$rc" -ne 0 ]; then
	die "e2e failed (exit $rc); cluster $CLUSTER kept for debugging" "KUBECONFIG=$KUBECONFIG" "logs: $ART/logs"
fi
if [ "${REUSE:-0}" != 1 ]; then
	bash "$REPO_ROOT/scripts/cluster.sh" down
else
	info "REUSE=1: cluster $CLUSTER kept (KUBECONFIG=$KUBECONFIG)"
fi
info "e2e passed"
