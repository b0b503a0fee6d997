#!/usr/bin/env bash
# Hubble relay merge cost at 3 nodes (issue 17's closing note): the upstream
# hubble-relay (HUBBLE_VERSION, built by scripts/hubble-build.sh) in front of three
# in-process flatnet agents (Observer + Peer + gRPC server on 127.0.0.1-3), read
# through the relay and straight from one agent in the same process, interleaved
# (dataplane/hubble/relaybench BenchmarkRelay):
#   - history: `--last 10000` of full stores: flows/s direct and through the relay
#     (which merges 3 x 10,000), their ratio, the relay's CPU per flow;
#   - follow: 1,000 flows/s per agent followed directly and through the relay:
#     latency from the agent's Add to the client, p50/p99, and the p50 ratio.
# Each of COUNT rounds is a new process; ratios are taken within a round, and
# benchstat gives each figure's median and interval over the rounds. Raw output and benchstat's view go to
# _output/bench-hubble/. Nothing is asserted.
#
#   COUNT=6 HISTORY_OPS=10 FOLLOW_OPS=3000 scripts/bench-hubble.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT=${COUNT:-6}
HISTORY_OPS=${HISTORY_OPS:-10}
FOLLOW_OPS=${FOLLOW_OPS:-3000}
BENCHSTAT_VERSION=${BENCHSTAT_VERSION:-v0.0.0-20250515181355-8f5f3abfb71a}

out=$OUT_DIR/bench-hubble
mkdir -p "$out"
bash "$REPO_ROOT/scripts/hubble-build.sh" hubble-relay "$BIN_DIR/hubble-relay"
export FLATNET_HUBBLE_RELAY=$BIN_DIR/hubble-relay FLATNET_REQUIRE_HUBBLE_RELAY=1
go_build_pinned benchstat golang.org/x/perf "$BENCHSTAT_VERSION" golang.org/x/perf/cmd/benchstat "$FLATNET_CACHE/bin/benchstat"
step "building the test binary"
(cd "$REPO_ROOT" && run_logged "$out/build.log" go test -c -o "$out/relaybench.test" ./dataplane/hubble/relaybench)

{
	echo "machine: $(nproc) CPUs, kernel $(uname -r), $(date -u +%FT%TZ), hubble-relay $HUBBLE_VERSION"
	echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt" >&2
: >"$out/relay.txt"
for i in $(seq 1 "$COUNT"); do
	step "round $i/$COUNT (load $(cut -d' ' -f1-3 /proc/loadavg))"
	echo "# round $i load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/relay.txt"
	(cd "$REPO_ROOT/dataplane/hubble/relaybench" && "$out/relaybench.test" -test.run '^$' -test.bench '^BenchmarkRelay$/^history$' \
		-test.benchtime "${HISTORY_OPS}x" -test.count 1) >>"$out/relay.txt" 2>&1 || warn "history failed in round $i: see $out/relay.txt"
	(cd "$REPO_ROOT/dataplane/hubble/relaybench" && "$out/relaybench.test" -test.run '^$' -test.bench '^BenchmarkRelay$/^follow$' \
		-test.benchtime "${FOLLOW_OPS}x" -test.count 1) >>"$out/relay.txt" 2>&1 || warn "follow failed in round $i: see $out/relay.txt"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"
"$FLATNET_CACHE/bin/benchstat" -filter '.unit:(direct-flows/s OR relay-flows/s OR relay/direct OR relay-cpu-ns/flow OR direct-ms/request OR relay-ms/request OR direct-p50-µs OR direct-p99-µs OR relay-p50-µs OR relay-p99-µs OR relay/direct-p50)' \
	"$out/relay.txt" >"$out/benchstat.txt" 2>&1 || true

{
	cat "$out/machine.txt"
	echo
	echo "relay merge at 3 nodes, $COUNT rounds (benchstat: median ± 95% interval over the rounds)."
	echo "history relay/direct: relay flows/s over direct flows/s of the same round (the relay merges 3 agents' 10,000 each);"
	echo "follow relay/direct-p50: relay p50 latency over direct p50 latency (relay sort buffer 100 flows, drain timeout 1 s)."
	grep -h -A3 -- '--- FAIL' "$out/relay.txt" || true
	echo
	cat "$out/benchstat.txt"
} | tee "$out/summary.txt"
info "raw output and summary: $out"
