#!/usr/bin/env bash
# `make e2e`: everything, on a fresh machine or a warm one.
#   tools -> docker engine -> node image -> kind cluster -> flatnet images + deploy
#   -> every Ginkgo suite under suites/ -> one JUnit + report in _artifacts/e2e
# (the suites' binaries and hubble-relay build beside engine and node image, at low priority)
# The suites run as separate processes, E2E_CONCURRENCY at once (default 4; 1 runs
# them one by one, beside the disruptive lane's one if the cluster has it), each in
# namespaces of its own; a suite whose specs carry a `family:` label (netpol) runs
# as up to E2E_PARTS (default 3) processes, its
# families balanced by the last run's times; the specs labelled `disruptive`
# (they restart a node, stop an agent or fill a node) run one process at a time: on
# a cluster that keeps a node for them (label flatnet.io/e2e-lane=disruptive), there,
# beside the others; elsewhere after them, alone. Their Ginkgo reports are
# merged into one junit.xml and report.json, checked against a dry run of every
# suite: each spec selected ran exactly once.
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
PARTS=${E2E_PARTS:-3}
[[ "$PARTS" =~ ^[1-9][0-9]*$ ]] || die "E2E_PARTS=$PARTS: want how many processes a suite with family: labels may be split into (1 or more)"
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
# into $SUITES_BIN; nothing when the tree is what they were built from, a copy of the
# machine's when another clone of the same tree built them ($SUITES_CACHE: CI's clone
# of what was tried here last).
SUITES_CACHE="$FLATNET_CACHE/e2e-bin"
build_suites() {
	local key
	key=$(tree_key)
	if [ "$(cat "$SUITES_BIN/.inputs" 2>/dev/null)" = "$key" ]; then
		info "suites: test binaries up to date (${#suites[@]} suites, tree $key)"
		return 0
	fi
	if [ "$(cat "$SUITES_CACHE/.inputs" 2>/dev/null)" = "$key" ] &&
		{ rm -rf "$SUITES_BIN" && link_tree "$SUITES_CACHE" "$SUITES_BIN"; }; then
		info "suites: test binaries of tree $key from the machine's cache"
		return 0
	fi
	step "suites: building the test binaries of ${suites[*]} (tree $key)"
	rm -rf "$SUITES_BIN"
	mkdir -p "$SUITES_BIN"
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/e2e-build.log" nice -n 5 env "${GOBUILD_ENV[@]}" go test -c -tags e2e -trimpath \
		-ldflags "-s -w" -o "$SUITES_BIN/" "${suites[@]/#/./suites/}")
	(cd "$REPO_ROOT" && CGO_ENABLED=0 run_logged "$OUT_DIR/e2e-build.log" nice -n 5 env "${GOBUILD_ENV[@]}" go build -trimpath \
		-ldflags "-s -w" -o "$SUITES_BIN/" ./suites/cmd/e2e ./suites/cmd/conformance ./dataplane/cmd/flatnetctl)
	echo "$key" >"$SUITES_BIN/.inputs"
	{ rm -rf "$SUITES_CACHE" "$SUITES_CACHE.new" && link_tree "$SUITES_BIN" "$SUITES_CACHE.new" &&
		mv "$SUITES_CACHE.new" "$SUITES_CACHE"; } ||
		warn "could not keep the suites' test binaries in the machine's cache $SUITES_CACHE (the next clone builds them again)"
}

# link_tree FROM TO: TO as hard links to FROM's files (~500 MB of binaries: no copy),
# a copy across file systems. A rebuild removes its directory first, so the linked
# files themselves are never written again.
link_tree() {
	cp -al "$1" "$2" 2>/dev/null || { rm -rf "$2" && cp -a "$1" "$2"; }
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

# The phases' label filters; the benchmarks (label bench) are opt-in: they run
# only when a label filter selects them. On a cluster with a disruptive lane node
# (kind-configs/default.yaml) the specs that hold every node to be up and
# undisturbed (label every-node) run in the lane with the disruptive ones.
SIDE_BY_SIDE='!disruptive && !bench'
DISRUPTIVE='disruptive && !bench'
LANE_SIDE_BY_SIDE='!disruptive && !every-node && !bench'
LANE='(disruptive || every-node) && !bench'
# The last whole run's merged report (no FOCUS or SKIP): each family's time per spec,
# to balance the parts. Kept in the machine's cache, not the tree's _output: a clean
# clone (CI's) balances by the last run on this machine; a machine with none by the
# times committed beside the suite (suites/<suite>/parts-times.tsv, `e2e times`).
LAST_REPORT="$FLATNET_CACHE/e2e-last-report.json"
mkdir -p "$FLATNET_CACHE"

# list_specs DIR: a Ginkgo dry run of every suite under the run's filters into
# DIR/<suite>.json (no cluster is touched: the suites read the image's name only
# to build their spec trees).
list_specs() {
	local dir=$1 s
	rm -rf "$dir"
	mkdir -p "$dir"
	for s in "${suites[@]}"; do
		(cd "$REPO_ROOT/suites/$s" && PROBE_IMAGE=${PROBE_IMAGE:-flatnet/probe:dry-run} "$SUITES_BIN/$s.test" -ginkgo.dry-run \
			"${ginkgo_args[@]}" -ginkgo.label-filter='!bench' -ginkgo.json-report="$dir/$s.json" >"$dir/$s.log" 2>&1) ||
			die "listing the specs of suite $s failed" "log: $dir/$s.log"
	done
}

# plan PHASE-FILTER MAX-PARTS: "<suite> <specs> <est. seconds> <label filter>" per
# process to run in the phase, from the dry runs in $LISTED (suites/internal/parts;
# its table of a split suite's parts goes to stderr).
plan() {
	local filter=$1 n=$2 s line
	for s in "${suites[@]}"; do
		"$SUITES_BIN/e2e" parts -n "$n" --base "$filter" --last "$LAST_REPORT" \
			--times "$REPO_ROOT/suites/$s/parts-times.tsv" "$LISTED/$s.json" 2>"$LISTED/$s.parts" |
			while read -r line; do echo "$s $line"; done
		[ "${PIPESTATUS[0]}" = 0 ] || die "splitting suite $s into parts failed: $(cat "$LISTED/$s.parts")"
		if [ "$(grep -c . "$LISTED/$s.parts")" -gt 2 ]; then
			info "suite $s in parts:"
			cat "$LISTED/$s.parts" >&2
		fi
	done
}

if [ "${LIST:-0}" = 1 ]; then
	build_suites
	filters
	# Its reports go to a directory of its own: the last run's artifacts stay.
	LISTED="$OUT_DIR/e2e-list"
	list_specs "$LISTED"
	"$SUITES_BIN/e2e" list "$LISTED"/*.json
	plan "$SIDE_BY_SIDE" "$PARTS" >/dev/null
	exit 0
fi

rm -rf "$ART"
mkdir -p "$ART/ginkgo"

# prebuild: the Go builds of the later phases that need no engine nor cluster (the
# suites' binaries, hubble-relay, the agent image's packages), at low priority beside
# the engine and the node image. Those builds are CPU-bound but not always: module
# downloads, the node image's assembly and kind's start leave a core idle for
# minutes on a cold machine. Not beside the tools: kubectl's and the hubble CLI's
# packages (client-go, cilium's) would be compiled twice at once; after them they
# are in Go's build cache. What it builds, the later phases reuse (the suites' tree
# key, hubble-build.sh's key, Go's build cache); a failure here only means they
# build it themselves, and report it.
PREBUILD_LOG="$OUT_DIR/e2e-prebuild.log"
prebuild() {
	local t0=$SECONDS
	# Only a machine without a node image has minutes of builds ahead: elsewhere the
	# agent's packages are compiled only if its image changed, by deploy.
	if ! docker image ls -q 'flatnet/node' 2>/dev/null | grep -q .; then
		(cd "$REPO_ROOT" && CGO_ENABLED=0 gobuild build -trimpath ./dataplane/cmd/flatnet-agent ./dataplane/cmd/flatnet-certgen \
			./dataplane/cmd/flatnet-cni github.com/containernetworking/plugins/plugins/meta/portmap) || return 1
	fi
	bash "$REPO_ROOT/scripts/hubble-build.sh" hubble-relay "$BIN_DIR/hubble-relay" || return 1
	build_suites || return 1
	echo "prebuild: done in $((SECONDS - t0))s"
}
# A run that stops early (a failed phase, Ctrl-C) leaves no build behind.
kill_tree() {
	local c
	for c in $(pgrep -P "$1"); do kill_tree "$c"; done
	kill "$1" 2>/dev/null || true
}
trap '[ -z "${prebuild_pid:-}" ] || kill_tree "$prebuild_pid"' EXIT
# prebuilt: wait for the pre-build; its products are then used, or rebuilt and reported.
prebuilt() {
	[ -n "${prebuild_pid:-}" ] || return 0
	wait "$prebuild_pid" || warn "the background pre-build failed (log: $PREBUILD_LOG); the phases build what it did not"
	prebuild_pid=
	local done
	done=$(grep -h '^prebuild: done' "$PREBUILD_LOG" || true)
	[ -z "$done" ] || info "$done (log: $PREBUILD_LOG)"
}

phase tools bash "$REPO_ROOT/scripts/tools.sh"
(renice -n 10 "$BASHPID" >/dev/null && prebuild) >"$PREBUILD_LOG" 2>&1 &
prebuild_pid=$!
phase cluster bash "$REPO_ROOT/scripts/cluster.sh" up
phase prebuild prebuilt
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
# resilience and observability run the flatnetctl built with the suites, from this tree.
export FLATNET_FLATNETCTL="$SUITES_BIN/flatnetctl"

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

# start_run RUN SUITE FILTER: SUITE's specs matching label FILTER, in the background;
# output in $ART/RUN.log, Ginkgo's JSON report in $ART/ginkgo/RUN.json. A part of a
# suite (RUN suite-N) and a suite's disruptive run (RUN suite-disruptive: resilience
# has specs in both phases) write their truth-table reports under $ART/RUN/.
start_run() {
	local run=$1 s=$2 filter=$3 art=$ART
	[ "$run" = "$s" ] || art="$ART/$run"
	(cd "$REPO_ROOT/suites/$s" && ARTIFACTS="$art" exec setsid "$SUITES_BIN/$s.test" -ginkgo.v "${ginkgo_args[@]}" \
		-ginkgo.label-filter="$filter" -ginkgo.json-report="$ART/ginkgo/$run.json") >"$ART/$run.log" 2>&1 &
	pid_suite[$!]=$run
	started[$run]=$SECONDS
}

# queue_phase LANE N PHASE-FILTER SUFFIX MAX-PARTS: the phase's processes (plan)
# onto the run queue, to run in LANE, N of that lane at once, longest first by the
# last run's times. Suites with nothing to run in the phase start no process, but
# for the first phase: there every suite runs, so the report lists even the specs
# a filter leaves out.
declare -A took_run=() filter_run=() lane_run=() lane_cap=() lane_busy=()
failures=()
queue=()
queue_phase() {
	local lane=$1 n=$2 phase_filter=$3 suffix=$4 parts=$5 s run specs secs filter
	local q=()
	lane_cap[$lane]=$n
	lane_busy[$lane]=0
	plan "$phase_filter" "$parts" >"$LISTED/plan$suffix"
	while read -r s specs secs filter; do
		[ "$specs" -gt 0 ] || [ -z "$suffix" ] || continue
		run=$s$suffix
		[ -z "$filter" ] || run=$s-$((++part_of[$s]))$suffix
		filter_run[$run]="$phase_filter${filter:+ && ($filter)}"
		lane_run[$run]=$lane
		q+=("$secs $run $s")
	done <"$LISTED/plan$suffix"
	[ ${#q[@]} = 0 ] || mapfile -t -O "${#queue[@]}" queue < <(printf '%s\n' "${q[@]}" | sort -k1,1nr -k2,2 | cut -d' ' -f2-)
}

# run_queue: the queued processes, each as soon as its lane has room; a line as
# each ends, the running ones every minute.
run_queue() {
	local p s run code i last=$SECONDS
	while [ ${#queue[@]} -gt 0 ] || [ ${#pid_suite[@]} -gt 0 ]; do
		i=0
		while [ "$interrupted" = 0 ] && [ "$i" -lt ${#queue[@]} ]; do
			read -r run s <<<"${queue[$i]}"
			if [ "${lane_busy[${lane_run[$run]}]}" -lt "${lane_cap[${lane_run[$run]}]}" ]; then
				start_run "$run" "$s" "${filter_run[$run]}"
				lane_busy[${lane_run[$run]}]=$((lane_busy[${lane_run[$run]}] + 1))
				queue=("${queue[@]:0:i}" "${queue[@]:i+1}")
			else
				i=$((i + 1))
			fi
		done
		[ "$interrupted" = 0 ] || queue=()
		# A wait the trap interrupts at once (a foreground sleep would hold it back).
		sleep 1 &
		wait $! || true
		for p in "${!pid_suite[@]}"; do
			kill -0 "$p" 2>/dev/null && continue
			run=${pid_suite[$p]}
			unset "pid_suite[$p]"
			lane_busy[${lane_run[$run]}]=$((lane_busy[${lane_run[$run]}] - 1))
			code=0
			wait "$p" || code=$?
			took_run[$run]=$((SECONDS - started[$run]))
			if [ "$code" = 0 ]; then
				info "$run: passed in ${took_run[$run]}s"
			else
				rc=1
				warn "$run: FAILED (exit $code) in ${took_run[$run]}s; log: $ART/$run.log"
				grep -E '^\s*\[(FAIL|PANICKED|TIMEDOUT|INTERRUPTED)\]' "$ART/$run.log" | head -n 5 >&2 || true
				# Said again under the final ERROR, with each failed spec (e2e failures):
				# a CI log's tail then names what failed.
				failures+=("$run: exit $code after ${took_run[$run]}s, log $ART/$run.log")
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

# Every suite listed under the run's filters: the parts are split from it, and the
# merged report is held to it.
LISTED="$ART/list"
list_specs "$LISTED"
declare -A part_of=()
# The disruptive specs restart a node, stop an agent or fill a node's pod capacity.
# On a cluster that keeps a node for them (its lane), they do it there, one process
# at a time beside the other suites, which have nothing on that node; elsewhere they
# run after the others, alone.
lane_node=$("$BIN_DIR/kubectl" get nodes -l flatnet.io/e2e-lane=disruptive -o jsonpath='{.items[*].metadata.name}') ||
	die "could not list the cluster's nodes" "KUBECONFIG=$KUBECONFIG"
t0=$SECONDS
if [ -n "$lane_node" ]; then
	step "suites: ${#suites[@]}, at most $CONCURRENCY processes at once, and the disruptive specs one process at a time beside them on node $lane_node${FOCUS:+, --focus='$FOCUS'}${SKIP:+, --skip='$SKIP'} -> $ART"
	queue_phase side "$CONCURRENCY" "$LANE_SIDE_BY_SIDE" "" "$PARTS"
	queue_phase lane 1 "$LANE" "-disruptive" 1
	run_queue
	took[suites]=$((SECONDS - t0))
else
	step "suites: ${#suites[@]}, at most $CONCURRENCY processes at once${FOCUS:+, --focus='$FOCUS'}${SKIP:+, --skip='$SKIP'} -> $ART"
	queue_phase side "$CONCURRENCY" "$SIDE_BY_SIDE" "" "$PARTS"
	run_queue
	took[suites]=$((SECONDS - t0))
	if [ "$interrupted" = 0 ]; then
		step "suites: the disruptive specs (they restart nodes or stop agents), alone"
		t0=$SECONDS
		queue_phase alone 1 "$DISRUPTIVE" "-disruptive" 1
		run_queue
		took[disruptive]=$((SECONDS - t0))
	fi
fi
trap - INT TERM

mapfile -t reports < <(ls "$ART"/ginkgo/*.json 2>/dev/null)
if [ ${#reports[@]} -gt 0 ]; then
	echo >&2
	"$SUITES_BIN/e2e" merge -o "$ART" --listed "$LISTED" "${reports[@]}" >&2 ||
		{ rc=1; failures+=("the merged report: a spec failed, ran twice or did not run (its table above)"); }
	mapfile -t -O "${#failures[@]}" failures < <("$SUITES_BIN/e2e" failures "${reports[@]}" 2>&1)
	# Only a whole run's times balance the next: a FOCUS would leave most families unweighed.
	[ "$interrupted" != 0 ] || [ -n "${FOCUS:-}${SKIP:-}" ] || cp "$ART/report.json" "$LAST_REPORT" 2>/dev/null || true
else
	rc=1
	failures+=("no suite wrote a Ginkgo report (logs: $ART/*.log)")
fi

[ "$rc" = 0 ] || FLATNETCTL="$SUITES_BIN/flatnetctl" bash "$REPO_ROOT/scripts/sysdump.sh" "$ART" || true

printf '\n  %-22s %7s  %s\n' process seconds "label filter" >&2
for run in $(for r in "${!took_run[@]}"; do echo "${took_run[$r]} $r"; done | sort -k1,1nr | cut -d' ' -f2); do
	printf '  %-22s %7d  %s\n' "$run" "${took_run[$run]}" "${filter_run[$run]}" >&2
done
printf '\n  %-13s %s\n' phase seconds >&2
for k in tools cluster prebuild probe-image deploy test-world observability build-suites suites disruptive; do
	[ -n "${took[$k]:-}" ] && printf '  %-13s %5d\n' "$k" "${took[$k]}" >&2
done
printf '  %-13s %5d\n' total "$(($(date +%s) - _t0))" >&2
printf '  load average: %s\n  JUnit: %s\n\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$ART/junit.xml" >&2

[ "$interrupted" = 0 ] || die "e2e interrupted; cluster $CLUSTER kept" "KUBECONFIG=$KUBECONFIG"
if [ "$rc" -ne 0 ]; then
	die "e2e failed; cluster $CLUSTER kept for debugging" "${failures[@]}" "KUBECONFIG=$KUBECONFIG" "sysdump and logs: $ART"
fi
if [ "${REUSE:-0}" != 1 ]; then
	bash "$REPO_ROOT/scripts/test-world.sh" down
	bash "$REPO_ROOT/scripts/cluster.sh" down
else
	info "REUSE=1: cluster $CLUSTER kept (KUBECONFIG=$KUBECONFIG)"
fi
info "e2e passed"
