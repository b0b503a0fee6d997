#!/usr/bin/env bash
# Datapath benchmarks on real netns pods (issues #5 and #6), as root:
#   - dataplane/bpf BenchmarkNetnsTCP: TCP_CRR and TCP_RR between two pods with no
#     program, programs with 0 rules, with 1,000 rules (on tcx links and, as attached
#     before the agent moves them there, on clsact filters; direct local delivery, and
#     through the host stack), and flow events off/all; then no program vs 1,000 rules
#     again on a node netns with kube-proxy-like NAT rules (netfilter tracking every
#     forwarded packet, as on a Kubernetes node);
#   - dataplane/flows BenchmarkFlowEventFlood: flow events per second the agent's
#     pipeline takes in from a flood of denied SYNs, at the default and a raised rate.
# Each of COUNT rounds is a new process running every variant once, so variants
# interleave and drift hits them alike; ratios are taken within a round (variant
# ops/s over dp=none ops/s of the same round) and summarized as median [min..max].
# Raw output and benchstat's view go to _output/bench-datapath/. Nothing is asserted.
# BASE=<git ref> runs the TCP benchmarks of that commit too (its programs, built from
# its tree), alternating with this tree's in every round (which goes first alternates
# too), and prints what this tree changes against it: one run, the same load on both.
#
#   COUNT=6 BENCHTIME=1s FLOOD_BENCHTIME=2s [BASE=main] scripts/bench-datapath.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

COUNT=${COUNT:-6}
BENCHTIME=${BENCHTIME:-1s}
FLOOD_BENCHTIME=${FLOOD_BENCHTIME:-2s}
BENCHSTAT_VERSION=${BENCHSTAT_VERSION:-v0.0.0-20250515181355-8f5f3abfb71a}
BASE=${BASE:-}
[ "$(id -u)" = 0 ] || die "bench-datapath needs root (netns, veth, BPF)"
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "COUNT=$COUNT: want a number of rounds, 1 or more" "e.g. COUNT=6"
base_rev=
if [ -n "$BASE" ]; then
	base_rev=$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$BASE^{commit}") ||
		die "BASE=$BASE: not a commit of $REPO_ROOT" "give a branch, tag or commit to compare with (e.g. BASE=main), or leave BASE unset"
fi
export FLATNET_REQUIRE_PRIVILEGED=1 # a benchmark that cannot run fails, never skips

out=$OUT_DIR/bench-datapath
mkdir -p "$out"
base_src=$out/base-src
trap 'rm -rf "$base_src"' EXIT
# benchstat is not a go.mod tool: adding it would move other modules of go.mod.
go_build_pinned benchstat golang.org/x/perf "$BENCHSTAT_VERSION" golang.org/x/perf/cmd/benchstat "$FLATNET_CACHE/bin/benchstat"
step "building the test binaries"
(cd "$REPO_ROOT" && run_logged "$out/build.log" go test -c -o "$out/bpf.test" ./dataplane/bpf)
(cd "$REPO_ROOT" && run_logged "$out/build.log" go test -c -o "$out/flows.test" ./dataplane/flows)
if [ -n "$BASE" ]; then
	step "building the test binary of BASE=$BASE (${base_rev:0:12})"
	rm -rf "$base_src" && mkdir -p "$base_src"
	git -C "$REPO_ROOT" archive "$base_rev" | tar -x -C "$base_src"
	(cd "$base_src" && run_logged "$out/build.log" go test -c -o "$out/bpf-base.test" ./dataplane/bpf)
fi

machine() {
	echo "machine: $(nproc) CPUs, kernel $(uname -r), $(date -u +%FT%TZ)"
	echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
}
# tcp_round ROUND BINARY PKG-DIR SUFFIX: one round of the TCP benchmarks of one test
# binary into tcp$SUFFIX.txt and tcp-kube-proxy$SUFFIX.txt. A failed variant (e.g. a
# 3 s stall on a loaded machine) is reported, not fatal: the round's other variants
# still count.
tcp_round() {
	local i=$1 bin=$2 dir=$3 sfx=$4
	(cd "$dir" && FLATNET_BENCH_ROTATE=$i "$bin" -test.run '^$' -test.bench '^BenchmarkNetnsTCP$' \
		-test.benchtime "$BENCHTIME" -test.count 1) >>"$out/tcp$sfx.txt" 2>&1 || warn "BenchmarkNetnsTCP ($bin) failed in round $i: see $out/tcp$sfx.txt"
	# The same on a node as Kubernetes runs it: kube-proxy's NAT rules put netfilter's
	# connection tracking on every forwarded packet, which direct delivery skips.
	(cd "$dir" && FLATNET_BENCH_KUBE_PROXY=1 FLATNET_BENCH_ROTATE=$i "$bin" -test.run '^$' \
		-test.bench '^BenchmarkNetnsTCP$/^test=(CRR|RR)$/^dp=(none|prog\+1000rules|prog\+1000rules\+filters|prog\+1000rules\+host-routing)$' \
		-test.benchtime "$BENCHTIME" -test.count 1) >>"$out/tcp-kube-proxy$sfx.txt" 2>&1 || warn "BenchmarkNetnsTCP (kube-proxy node, $bin) failed in round $i: see $out/tcp-kube-proxy$sfx.txt"
}
: >"$out/tcp.txt"
: >"$out/tcp-kube-proxy.txt"
: >"$out/flood.txt"
: >"$out/tcp-base.txt"
: >"$out/tcp-kube-proxy-base.txt"
machine | tee "$out/machine.txt" >&2
[ -z "$BASE" ] || echo "BASE=$BASE ($base_rev) alternating with this tree ($(git -C "$REPO_ROOT" rev-parse --short=12 HEAD)$(git -C "$REPO_ROOT" diff --quiet HEAD -- dataplane || echo ', dataplane/ modified'))" | tee -a "$out/machine.txt" >&2
for i in $(seq 1 "$COUNT"); do
	step "round $i/$COUNT (load $(cut -d' ' -f1-3 /proc/loadavg))"
	echo "# round $i load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/tcp.txt" "$out/tcp-kube-proxy.txt" "$out/tcp-base.txt" "$out/tcp-kube-proxy-base.txt" >>"$out/flood.txt"
	if [ -z "$BASE" ]; then
		tcp_round "$i" "$out/bpf.test" "$REPO_ROOT/dataplane/bpf" ""
	elif [ $((i % 2)) = 1 ]; then
		tcp_round "$i" "$out/bpf-base.test" "$base_src/dataplane/bpf" -base
		tcp_round "$i" "$out/bpf.test" "$REPO_ROOT/dataplane/bpf" ""
	else
		tcp_round "$i" "$out/bpf.test" "$REPO_ROOT/dataplane/bpf" ""
		tcp_round "$i" "$out/bpf-base.test" "$base_src/dataplane/bpf" -base
	fi
	(cd "$REPO_ROOT/dataplane/flows" && "$out/flows.test" -test.run '^$' -test.bench '^BenchmarkFlowEventFlood$' \
		-test.benchtime "$FLOOD_BENCHTIME" -test.count 1) >>"$out/flood.txt" 2>&1 || warn "BenchmarkFlowEventFlood failed in round $i: see $out/flood.txt"
done
failures=$(grep -h -A3 -- '--- FAIL' "$out"/tcp*.txt "$out/flood.txt" || true)
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"

"$FLATNET_CACHE/bin/benchstat" -col '/dp@(none prog prog+1000rules prog+1000rules+filters prog+1000rules+host-routing prog+events-off prog+events-all)' -filter '.unit:(sec/op OR cpu-ns/op OR prog-ns/op)' "$out/tcp.txt" >"$out/benchstat-tcp.txt" 2>&1 || true
"$FLATNET_CACHE/bin/benchstat" "$out/flood.txt" >"$out/benchstat-flood.txt" 2>&1 || true

# summary TCP-FILE FLOOD-FILE: the tables, from the raw output.
summary() {
	awk '
	function med(a, n,   i, j, t, b) {
		for (i = 1; i <= n; i++) b[i] = a[i]
		for (i = 2; i <= n; i++) for (j = i; j > 1 && b[j-1] > b[j]; j--) { t = b[j]; b[j] = b[j-1]; b[j-1] = t }
		return n % 2 ? b[(n+1)/2] : (b[n/2] + b[n/2+1]) / 2
	}
	function lo(a, n,   i, m) { m = a[1]; for (i = 2; i <= n; i++) if (a[i] < m) m = a[i]; return m }
	function hi(a, n,   i, m) { m = a[1]; for (i = 2; i <= n; i++) if (a[i] > m) m = a[i]; return m }
	function unit(u,   k) { for (k = 3; k < NF; k += 2) if ($(k+1) == u) return $k; return "" }
	FNR == 1 { file++ }
	/^# round/ { round[file]++; next }
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		r = round[file]
		if (file == 1) {
			split(name, p, "/"); t = p[2]; sub(/test=/, "", t); d = p[3]; sub(/dp=/, "", d)
			if (!(t in seen_t)) { seen_t[t] = 1; tests[++nt] = t }
			if (!(d in seen_d)) { seen_d[d] = 1; nd++ }
			ns[t, d, r] = unit("ns/op"); cpu[t, d, r] = unit("cpu-ns/op")
			pns[t, d, r] = unit("prog-ns/op"); prun[t, d, r] = unit("ns/prog-run")
			ev[t, d, r] = unit("events/op"); lost[t, d, r] = unit("lost/op")
		} else {
			split(name, p, "/"); v = p[2]; sub(/rate=/, "", v)
			if (!(v in seen_v)) { seen_v[v] = 1; rates[++nv] = v }
			fe[v, r] = unit("events/s"); fl[v, r] = unit("lost/s"); fs[v, r] = unit("sent/s")
		}
	}
	END {
		rounds = round[1]
		# Rows in a fixed order (rounds rotate the order variants run in).
		split("none prog prog+1000rules prog+1000rules+filters prog+1000rules+host-routing prog+events-off prog+events-all", order, " ")
		nd = 0
		for (j = 1; j in order; j++) if (order[j] in seen_d) { dps[++nd] = order[j]; delete seen_d[order[j]] }
		for (d in seen_d) dps[++nd] = d
		printf "\nTCP between two netns pods: %d rounds (each a process running every variant once)\n", rounds
		printf "wall: ops/s; cpu: the process'"'"'s CPU time per op (client, server, flow reader, programs in softirq)\n"
		printf "ratio = dp=none ns/op / variant ns/op of the same round (wall: ops/s ratio), median [min..max]; goal >= 0.97 (issue 20)\n\n"
		printf "%-4s %-28s %10s %8s %22s %11s %22s\n", "test", "dp", "ns/op", "ops/s", "wall ratio vs none", "cpu-ns/op", "cpu ratio vs none"
		for (i = 1; i <= nt; i++) {
			t = tests[i]
			for (j = 1; j <= nd; j++) {
				d = dps[j]; n = 0; m = 0; k = 0; delete x; delete c; delete q; delete qc; delete e; delete l
				for (r = 1; r <= rounds; r++) {
					if (ns[t, d, r] == "") continue
					x[++n] = ns[t, d, r]; c[n] = cpu[t, d, r]; e[n] = ev[t, d, r]; l[n] = lost[t, d, r]
					if (ns[t, "none", r] != "") { q[++m] = ns[t, "none", r] / ns[t, d, r]; qc[++k] = cpu[t, "none", r] / cpu[t, d, r] }
				}
				if (n == 0) continue
				printf "%-4s %-28s %10.0f %8.0f %6.3f [%5.3f..%5.3f] %11.0f %6.3f [%5.3f..%5.3f]\n", t, d, med(x, n), 1e9 / med(x, n),
					med(q, m), lo(q, m), hi(q, m), med(c, n), med(qc, k), lo(qc, k), hi(qc, k)
			}
		}
		printf "\nthe programs'"'"' own time (BPF run time stats), median; est. ratio = none ns/op / (none ns/op + prog-ns/op):\n\n"
		printf "%-4s %-28s %10s %11s %8s %10s %9s %7s\n", "test", "dp", "prog-ns/op", "ns/prog-run", "runs/op", "est. ratio", "events/op", "lost/op"
		for (i = 1; i <= nt; i++) {
			t = tests[i]; n = 0; delete x
			for (r = 1; r <= rounds; r++) if (ns[t, "none", r] != "") x[++n] = ns[t, "none", r]
			base = n ? med(x, n) : 0
			for (j = 1; j <= nd; j++) {
				d = dps[j]; if (d == "none") continue
				n = 0; delete x; delete y; delete e; delete l
				for (r = 1; r <= rounds; r++) if (pns[t, d, r] != "") { x[++n] = pns[t, d, r]; y[n] = prun[t, d, r]; e[n] = ev[t, d, r]; l[n] = lost[t, d, r] }
				if (n == 0) continue
				printf "%-4s %-28s %10.0f %11.0f %8.1f %10.3f %9.2f %7.2f\n", t, d, med(x, n), med(y, n), med(y, n) ? med(x, n) / med(y, n) : 0,
					base ? base / (base + med(x, n)) : 0, med(e, n), med(l, n)
			}
		}
		printf "\nflow events: TCP_CRR of the same datapath with events on / with events off (same round), wall and cpu:\n"
		for (j = 1; j <= nd; j++) {
			d = dps[j]
			if (d != "prog" && d != "prog+events-all") continue
			m = 0; delete q; delete qc
			for (r = 1; r <= rounds; r++)
				if (ns["CRR", d, r] != "" && ns["CRR", "prog+events-off", r] != "") {
					q[++m] = ns["CRR", "prog+events-off", r] / ns["CRR", d, r]
					qc[m] = cpu["CRR", "prog+events-off", r] / cpu["CRR", d, r]
				}
			if (m) printf "  %-16s wall %6.3f [%5.3f..%5.3f]  cpu %6.3f [%5.3f..%5.3f]  (%s)\n", d, med(q, m), lo(q, m), hi(q, m),
				med(qc, m), lo(qc, m), hi(qc, m), d == "prog" ? "default bucket, 2000 events/s per CPU" : "raised bucket, every new connection"
		}
		if (nv) {
			printf "\nflow events one agent takes in (denied-SYN flood, reader+enricher+store), %d rounds, median [min..max]:\n\n", round[2]
			printf "%-8s %26s %26s %26s\n", "bucket", "events/s received", "lost/s (counted)", "SYNs/s sent"
			for (i = 1; i <= nv; i++) {
				v = rates[i]; n = 0; delete a; delete b; delete c
				for (r = 1; r <= round[2]; r++) if (fe[v, r] != "") { a[++n] = fe[v, r]; b[n] = fl[v, r]; c[n] = fs[v, r] }
				if (n) printf "%-8s %9.0f [%6.0f..%6.0f] %9.0f [%6.0f..%6.0f] %9.0f [%6.0f..%6.0f]\n", v,
					med(a, n), lo(a, n), hi(a, n), med(b, n), lo(b, n), hi(b, n), med(c, n), lo(c, n), hi(c, n)
			}
			printf "(default: 2000 events/s per CPU; raised: 10^7 per CPU, the ring and the reader are the limit)\n"
		}
	}' "$1" "$2"
}

# versus BASE-FILE NEW-FILE: per test and datapath, this tree against BASE over the
# same rounds: the programs' time per op, and the wall and cpu ratios against dp=none
# (each binary's own dp=none of the round), medians.
versus() {
	awk -v rounds="$COUNT" '
	function med(a, n,   i, j, t, b) {
		for (i = 1; i <= n; i++) b[i] = a[i]
		for (i = 2; i <= n; i++) for (j = i; j > 1 && b[j-1] > b[j]; j--) { t = b[j]; b[j] = b[j-1]; b[j-1] = t }
		return n % 2 ? b[(n+1)/2] : (b[n/2] + b[n/2+1]) / 2
	}
	function unit(u,   k) { for (k = 3; k < NF; k += 2) if ($(k+1) == u) return $k; return "" }
	# stat F T D WHAT: the median over the rounds of file F (1 base, 2 new).
	function stat(f, t, d, what,   r, n, x) {
		n = 0
		for (r = 1; r <= rounds; r++) {
			if (ns[f, t, d, r] == "") continue
			if (what == "prog") x[++n] = pns[f, t, d, r]
			else if (ns[f, t, "none", r] == "") continue
			else if (what == "wall") x[++n] = ns[f, t, "none", r] / ns[f, t, d, r]
			else x[++n] = cpu[f, t, "none", r] / cpu[f, t, d, r]
		}
		return n ? med(x, n) : -1
	}
	FNR == 1 { file++ }
	/^# round/ { round[file]++; next }
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name); split(name, p, "/")
		t = p[2]; sub(/test=/, "", t); d = p[3]; sub(/dp=/, "", d)
		if (!(t in seen_t)) { seen_t[t] = 1; tests[++nt] = t }
		seen_d[d] = 1
		r = round[file]
		ns[file, t, d, r] = unit("ns/op"); cpu[file, t, d, r] = unit("cpu-ns/op"); pns[file, t, d, r] = unit("prog-ns/op")
	}
	END {
		split("prog prog+1000rules prog+1000rules+filters prog+1000rules+host-routing prog+events-off prog+events-all", order, " ")
		printf "%-4s %-28s %10s %10s %9s %9s %9s %9s %9s\n", "test", "dp", "prog-ns/op", "", "", "wall", "ratio", "cpu", "ratio"
		printf "%-4s %-28s %10s %10s %9s %9s %9s %9s %9s\n", "", "", "base", "new", "new/base", "base", "new", "base", "new"
		for (i = 1; i <= nt; i++) for (j = 1; j in order; j++) {
			t = tests[i]; d = order[j]
			if (!(d in seen_d)) continue
			pb = stat(1, t, d, "prog"); pn = stat(2, t, d, "prog")
			if (pb < 0 || pn < 0) continue
			printf "%-4s %-28s %10.0f %10.0f %9.3f %9.3f %9.3f %9.3f %9.3f\n", t, d, pb, pn, pb ? pn / pb : 0,
				stat(1, t, d, "wall"), stat(2, t, d, "wall"), stat(1, t, d, "cpu"), stat(2, t, d, "cpu")
		}
	}' "$1" "$2"
}
if [ -n "$BASE" ]; then
	"$FLATNET_CACHE/bin/benchstat" -filter '.unit:(cpu-ns/op OR prog-ns/op)' base="$out/tcp-base.txt" new="$out/tcp.txt" >"$out/benchstat-base.txt" 2>&1 || true
fi

{
	cat "$out/machine.txt"
	echo
	echo "== bare node netns: no netfilter rules (the lean path: IP forwarding only) =="
	summary "$out/tcp.txt" "$out/flood.txt"
	echo
	echo "== node netns with kube-proxy's NAT rules (as every Kubernetes node): netfilter conntrack on forwarded packets =="
	summary "$out/tcp-kube-proxy.txt" /dev/null | sed '/^flow events: TCP_CRR/,$d'
	if [ -n "$BASE" ]; then
		echo
		echo "== this tree against BASE=$BASE (${base_rev:0:12}), the same $COUNT rounds (ratio: dp=none ns/op / variant ns/op, median) =="
		echo "bare node netns:"
		versus "$out/tcp-base.txt" "$out/tcp.txt"
		echo "node netns with kube-proxy's NAT rules:"
		versus "$out/tcp-kube-proxy-base.txt" "$out/tcp-kube-proxy.txt"
		echo
		echo "benchstat, bare node netns, BASE against this tree (cpu-ns/op, prog-ns/op):"
		cat "$out/benchstat-base.txt"
	fi
	[ -z "$failures" ] || printf '\nfailed variants (left out above):\n%s\n' "$failures"
	echo
	echo "benchstat -col /dp (sec/op, cpu-ns/op, prog-ns/op; vs base = against dp=none):"
	cat "$out/benchstat-tcp.txt"
	echo
	echo "benchstat of the flood:"
	cat "$out/benchstat-flood.txt"
} | tee "$out/summary.txt"
info "raw output and summary: $out"
