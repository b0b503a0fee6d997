#!/usr/bin/env bash
# `make e2e`: everything, on a fresh machine or a warm one.
#   tools -> docker engine -> node image -> kind cluster -> flatnet images + deploy
#   -> every Ginkgo suite under suites/ -> one JUnit + report in _artifacts/e2e
# The suites run as separate processes, E2E_CONCURRENCY at once (default 4; 1 runs
# them one by one), each in namespaces of its own; the specs labelled `disruptive`
# (they restart nodes or stop agents) run after, alone. Their Ginkgo reports are
# merged into one junit.xml and report.json.
# FOCUS=/SKIP= narrow the specs (Ginkgo regexps); LIST=1 lists every spec (a dry run:
# no cluster is touched); specs in suites/known-divergences are skipped (reported as
# skipped, with the reason) unless STRICT=1; REUSE=1 keeps the cluster for the next run
# (default: it is deleted when the run passes, kept for debugging when not). A failed
# run leaves a sysdump (scripts/sysdump.sh) in the artifacts.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER=${CLUSTER:-flatnet}
ART=${ARTIFACTS:-$REPO_ROOT/_artifacts/e2e}
CONCURRENCY=${E2E_CONCURRENCY:-4}
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || die "E2E_CONCURRENCY=$CONCURRENCY: want how many suites run at once (1 or more)"
[[ "${LIST:-0}" =~ ^[01]$ ]] || die "LIST=${LIST}: want 1 (list the specs, run nothing) or 0"
export KUBECONFIG="$OUT_DIR/$CLUSTER.kubeconfig"
export ARTIFACTS="$ART"
declare -A took
phase() { # NAME CMD...
	local name=$1 t0
	shift
	t0=$(date +%s)
	"$@"
	took[$name]=$(($(date +%s) - t0))
}

# --- the suites' binaries ------------------------------------------------------------
# The suites are the packages with an e2e-tagged suite file; the unit tests of suites/
# (report, framework self-test, ...) run in make test, not here.
mapfile -t suites < <(cd "$REPO_ROOT" && grep -l '^//go:build e2e' suites/*/*_suite_test.go | xargs -n1 dirname | xargs -n1 basename | sort -u)
[ "${#suites[@]}" -gt 0 ] || die "no e2e suites found under suites/"
SUITES_BIN="$OUT_DIR/e2e-bin"

# tree_key: a hash of every file of the tree git tracks or would (changed or new) but
# the docs and scripts, so an unchanged tree reuses the suites' test binaries and helpers
# instead of linking them again.
tree_key() {
	(cd "$REPO_ROOT" && {
		go env GOVERSION
		git ls-files -co --exclude-standard -z -- . ':!*.md' ':!scripts/' | xargs -0 sha256sum 2>/dev/null
	} | sha256sum | cut -c1-16)
}

# build_suites: each suite's test binary, the e2e and conformance helpers and flatnetctl
# into $SUITES_BIN; nothing when the tree is what they were built from.
build_suites() {
	local key
	key=$(tree_key)
	if [ "$(cat "$SUITES_BIN/.inputs" 2>/dev/null)" = "$key" ]; then
		info "suites: test binaries up to date (${#suites[@]} suites, tree $key)"
		return 0
	fi
	step "suites: building the test binaries of ${suites[*]} (tree $key)"
	rm -rf "$SUITES_BIN"
	mkdir -p "$SUITES_BIN"
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/e2e-build.log" nice -n 5 go test -c -tags e2e -trimpath \
		-ldflags "-s -w" -o "$SUITES_BIN/" "${suites[@]/#/./suites/}")
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/e2e-build.log" nice -n 5 go build -trimpath \
		-ldflags "-s -w" -o "$SUITES_BIN/" ./suites/cmd/e2e ./suites/cmd/conformance ./dataplane/cmd/flatnetctl)
	echo "$key" >"$SUITES_BIN/.inputs"
}

# ginkgo_args: the flags every suite process gets: the user's focus and skip, the
# known divergences as skips (the one reader of that format, suites/skiplist).
ginkgo_args=(-ginkgo.no-color -ginkgo.poll-progress-after=60s)
filters() {
	[ -n "${FOCUS:-}" ] && ginkgo_args+=("-ginkgo.focus=$FOCUS")
	[ -n "${SKIP:-}" ] && ginkgo_args+=("-ginkgo.skip=$SKIP")
	if [ "${STRICT:-0}" != 1 ]; then
		local known flag pattern
		known=$("$SUITES_BIN/conformance" skip-args --explain "skipping known divergence" "$REPO_ROOT/suites/known-divergences") ||
			die "suites/known-divergences is not a skip list" "format: <regexp><TAB><why>"
		while read -r flag && read -r pattern; do
			[ "$flag" = --skip ] && ginkgo_args+=("-ginkgo.skip=$pattern")
		done <<<"$known"
	fi
	return 0
}

if [ "${LIST:-0}" = 1 ]; then
	build_suites
	filters
	# A dry run creates no pod; the suites read the image's name only to build their spec trees.
	# Its reports go to a directory of its own: the last run's artifacts stay.
	export PROBE_IMAGE=${PROBE_IMAGE:-flatnet/probe:dry-run}
	dry="$OUT_DIR/e2e-list"
	rm -rf "$dry"
	mkdir -p "$dry"
	for s in "${suites[@]}"; do
		(cd "$REPO_ROOT/suites/$s" && "$SUITES_BIN/$s.test" -ginkgo.dry-run "${ginkgo_args[@]}" -ginkgo.label-filter='!bench' \
			-ginkgo.json-report="$dry/$s.json" >"$dry/$s.log" 2>&1) ||
			die "listing the specs of suite $s failed" "log: $dry/$s.log"
	done
	"$SUITES_BIN/e2e" list "$dry"/*.json
	exit 0
fi

rm -rf "$ART"
mkdir -p "$ART/ginkgo"

phase tools bash "$REPO_ROOT/scripts/tools.sh"
phase cluster bash "$REPO_ROOT/scripts/cluster.sh" up
for s in probe-image deploy; do
	[ -x "$REPO_ROOT/scripts/$s.sh" ] && phase "$s" bash "$REPO_ROOT/scripts/$s.sh" >"$OUT_DIR/$s.out"
done
# The offline world the north-south family probes (TEST_WORLD_CIDR on the node subnet).
phase test-world bash "$REPO_ROOT/scripts/test-world.sh"
export FLATNET_TEST_WORLD="$OUT_DIR/$CLUSTER.test-world.env"
# OBSERVABILITY=1: Prometheus records the suites (make observability); with REUSE=1 it stays to look at.
[ "${OBSERVABILITY:-0}" = 1 ] && phase observability bash "$REPO_ROOT/scripts/observability.sh"
phase build-suites build_suites
filters

# The release the cluster runs (make e2e K8S_VERSION=...; suites/cluster checks the kubelets).
export KUBERNETES_VERSION=${K8S_VERSION:-$KUBERNETES_VERSION}
# The suites read the node subnet from here: a second cluster's NODE_SUBNET=... reaches them.
export FLATNET_NODE_SUBNET=${FLATNET_NODE_SUBNET:-$NODE_SUBNET}
# One seed for the random family in every suite process: the side-by-side phase and the
# disruptive phase then name the same random cases, and the merged report holds each once.
export FLATNET_SEED=${FLATNET_SEED:-$(date +%s%N)}
FLATNET_NODES=$(bash "$REPO_ROOT/scripts/cluster.sh" nodes | tr '\n' ' ')
export FLATNET_NODES
[ -f "$OUT_DIR/probe-image.out" ] && PROBE_IMAGE=$(tail -n 1 "$OUT_DIR/probe-image.out") && export PROBE_IMAGE
# suites/hubble runs the upstream hubble CLI that `make tools` built (tools/hubble).
export FLATNET_HUBBLE_CLI="$BIN_DIR/hubble"

# --- running the suites --------------------------------------------------------------
# Each suite process has its own session, so a Ctrl-C reaches only this script, which
# passes one SIGTERM to each: Ginkgo then runs the suite's cleanup (its AfterSuite
# deletes the namespaces it created) and exits. A second Ctrl-C passes a second one:
# Ginkgo then leaves at once.
declare -A pid_suite=() started=()
rc=0
interrupted=0
on_signal() {
	interrupted=$((interrupted + 1))
	warn "interrupted: stopping ${#pid_suite[@]} suite(s); each deletes its namespaces first (Ctrl-C again: leave at once)"
	local p
	for p in "${!pid_suite[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap on_signal INT TERM

# start_suite SUITE RUN FILTER: SUITE's specs matching label FILTER, in the background;
# output in $ART/RUN.log, Ginkgo's JSON report in $ART/ginkgo/RUN.json.
start_suite() {
	local s=$1 run=$2 filter=$3
	(cd "$REPO_ROOT/suites/$s" && exec setsid "$SUITES_BIN/$s.test" -ginkgo.v "${ginkgo_args[@]}" \
		-ginkgo.label-filter="$filter" -ginkgo.json-report="$ART/ginkgo/$run.json") >"$ART/$run.log" 2>&1 &
	pid_suite[$!]=$run
	started[$run]=$SECONDS
}

# run_suites N FILTER SUFFIX SUITE...: the suites, N at once, longest first by the last
# run's times; a line as each ends, the running ones every minute.
run_suites() {
	local n=$1 filter=$2 suffix=$3 p s code last=$SECONDS
	shift 3
	local queue=("$@")
	while [ ${#queue[@]} -gt 0 ] || [ ${#pid_suite[@]} -gt 0 ]; do
		while [ "$interrupted" = 0 ] && [ ${#queue[@]} -gt 0 ] && [ ${#pid_suite[@]} -lt "$n" ]; do
			start_suite "${queue[0]}" "${queue[0]}$suffix" "$filter"
			queue=("${queue[@]:1}")
		done
		[ "$interrupted" = 0 ] || queue=()
		# A wait the trap interrupts at once (a foreground sleep would hold it back).
		sleep 1 &
		wait $! || true
		for p in "${!pid_suite[@]}"; do
			kill -0 "$p" 2>/dev/null && continue
			s=${pid_suite[$p]}
			unset "pid_suite[$p]"
			code=0
			wait "$p" || code=$?
			if [ "$code" = 0 ]; then
				info "suite $s: passed in $((SECONDS - started[$s]))s"
			else
				rc=1
				warn "suite $s: FAILED (exit $code) in $((SECONDS - started[$s]))s; log: $ART/$s.log"
				grep -E '^\s*\[(FAIL|PANICKED|TIMEDOUT|INTERRUPTED)\]' "$ART/$s.log" | head -n 5 >&2 || true
			fi
		done
		if [ $((SECONDS - last)) -ge 60 ] && [ ${#pid_suite[@]} -gt 0 ]; then
			last=$SECONDS
			local running=""
			for p in "${!pid_suite[@]}"; do running+="${running:+, }${pid_suite[$p]} $((SECONDS - started[${pid_suite[$p]}]))s"; done
			info "running: $running"
		fi
	done
}

# Longest first (the last run's times in $OUT_DIR/e2e-durations): the run is as long
# as its longest suite plus what waits for a free slot.
order=()
if [ -f "$OUT_DIR/e2e-durations" ]; then
	mapfile -t order < <(awk '{print $2}' "$OUT_DIR/e2e-durations")
fi
mapfile -t suites < <(
	for s in "${suites[@]}"; do
		i=$(printf '%s\n' "${order[@]}" | grep -nx "$s" | cut -d: -f1) || true
		echo "${i:-0} $s"
	done | sort -n | cut -d' ' -f2
)

step "suites: ${#suites[@]} at most $CONCURRENCY at once${FOCUS:+, --focus='$FOCUS'}${SKIP:+, --skip='$SKIP'} -> $ART"
t0=$SECONDS
# The benchmarks (label bench) are opt-in: they run only when a label filter selects them.
run_suites "$CONCURRENCY" '!disruptive && !bench' "" "${suites[@]}"
took[suites]=$((SECONDS - t0))
if [ "$interrupted" = 0 ]; then
	step "suites: the disruptive specs (they restart nodes or stop agents), alone"
	t0=$SECONDS
	run_suites 1 'disruptive && !bench' "-disruptive" "${suites[@]}"
	took[disruptive]=$((SECONDS - t0))
fi
trap - INT TERM

mapfile -t reports < <(ls "$ART"/ginkgo/*.json 2>/dev/null)
if [ ${#reports[@]} -gt 0 ]; then
	echo >&2
	"$SUITES_BIN/e2e" merge -o "$ART" "${reports[@]}" >&2 || rc=1
	[ "$interrupted" != 0 ] || "$SUITES_BIN/e2e" durations "$ART/report.json" >"$OUT_DIR/e2e-durations" || true
else
	rc=1
fi

[ "$rc" = 0 ] || FLATNETCTL="$SUITES_BIN/flatnetctl" bash "$REPO_ROOT/scripts/sysdump.sh" "$ART" || true

printf '\n  %-13s %s\n' phase seconds >&2
for k in tools cluster probe-image deploy test-world observability build-suites suites disruptive; do
	[ -n "${took[$k]:-}" ] && printf '  %-13s %5d\n' "$k" "${took[$k]}" >&2
done
printf '  %-13s %5d\n' total "$(($(date +%s) - _t0))" >&2
printf '  load average: %s\n  JUnit: %s\n\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$ART/junit.xml" >&2

[ "$interrupted" = 0 ] || die "e2e interrupted; cluster $CLUSTER kept" "KUBECONFIG=$KUBECONFIG"
if [ "$rc" -ne 0 ]; then
	die "e2e failed; cluster $CLUSTER kept for debugging" "KUBECONFIG=$KUBECONFIG" "sysdump and logs: $ART"
fi
if [ "${REUSE:-0}" != 1 ]; then
	bash "$REPO_ROOT/scripts/test-world.sh" down
	bash "$REPO_ROOT/scripts/cluster.sh" down
else
	info "REUSE=1: cluster $CLUSTER kept (KUBECONFIG=$KUBECONFIG)"
fi
info "e2e passed"
