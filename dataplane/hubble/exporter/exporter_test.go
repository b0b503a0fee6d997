package exporter

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/flatnet/flatnet/dataplane/flows"
	"github.com/flatnet/flatnet/internal/testenv"
)

// stop stops m's exporters, which first write everything they hold.
func stop(m *Manager) { m.stopAll() }

// Each line is a GetFlowsResponse of the whole flow, as `hubble observe -o json`
// prints it: protojson with proto field names.
func TestLinesAreGetFlowsResponses(t *testing.T) {
	m, _ := newTestManager(t, 0)
	apply(t, m, "flowLogs: [{name: all, filePath: all.log}]")
	var sent []*flowpb.Flow
	for i := range 100 {
		f := flowOf(i, "ns-a", []string{"FORWARDED", "DROPPED"}[i%2])
		sent = append(sent, f)
		m.Export(f)
	}
	stop(m)
	got := readLines(t, filepath.Join(m.opts.Dir, "all.log"))
	if len(got) != len(sent) {
		t.Fatalf("%d lines, want %d", len(got), len(sent))
	}
	for i, r := range got {
		if !proto.Equal(r.GetFlow(), sent[i]) {
			t.Fatalf("line %d: flow\n%v\nwant\n%v", i+1, r.GetFlow(), sent[i])
		}
		if r.NodeName != "kind-worker" || !proto.Equal(r.Time, sent[i].Time) {
			t.Fatalf("line %d: node_name %q time %v, want the flow's", i+1, r.NodeName, r.Time)
		}
	}
	raw, _ := os.ReadFile(filepath.Join(m.opts.Dir, "all.log"))
	first, _, _ := strings.Cut(string(raw), "\n")
	for _, w := range []string{`"flow":`, `"node_name":"kind-worker"`, `"traffic_direction":"INGRESS"`, `"ingress_denied_by"`} {
		if !strings.Contains(strings.ReplaceAll(string(raw), " ", ""), w) {
			t.Errorf("file does not hold %s (proto field names, as Hubble writes): %s", w, first)
		}
	}
	if got := counter(m, "written", "all"); got != 100 {
		t.Errorf("flatnet_flow_export_flows_total = %v, want 100", got)
	}
	if fi, _ := os.Stat(filepath.Join(m.opts.Dir, "all.log")); fi.Mode().Perm() != 0o640 {
		t.Errorf("file mode %v, want 0640", fi.Mode().Perm())
	}
}

// A flow the agent recorded (flows.Response, as flows.Run hands it to its
// observers) is written as its Hubble form, Proto.
func TestObserveResponse(t *testing.T) {
	m, _ := newTestManager(t, 0)
	r := &flows.Response{Flow: &flows.Flow{
		Time: time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC), Verdict: flows.VerdictDropped, NodeName: "kind-worker",
		DropReasonDesc: "POLICY_DENIED", TrafficDirection: flows.Ingress, Type: "L3_L4",
		IP:          &flows.IP{Source: "10.224.1.5", Destination: "10.224.2.7", IPVersion: "IPv4"},
		Source:      &flows.Endpoint{Namespace: "ns-a", PodName: "client"},
		Destination: &flows.Endpoint{Namespace: "server-ns", PodName: "server"},
		L4:          &flows.Layer4{TCP: &flows.TCP{SourcePort: 40000, DestinationPort: 80}},
	}, NodeName: "kind-worker"}
	m.Observe(r) // no exporter yet: nothing to do
	apply(t, m, `flowLogs: [{name: drops, filePath: drops.log, includeFilters: [{verdict: [DROPPED], destination_port: ["80"]}]}]`)
	m.Observe(r)
	stop(m)
	got := readLines(t, filepath.Join(m.opts.Dir, "drops.log"))
	if len(got) != 1 || !proto.Equal(got[0].GetFlow(), r.Proto()) {
		t.Fatalf("lines %v, want one of %v", got, r.Proto())
	}
	if f := got[0].GetFlow(); f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetSource().GetPodName() != "client" || got[0].GetNodeName() != "kind-worker" {
		t.Errorf("line %v does not carry the recorded flow", got[0])
	}
}

// An exporter writes the flows matching any include filter and no exclude
// filter, as Hubble's exporter selects them.
func TestFilters(t *testing.T) {
	m, _ := newTestManager(t, 0)
	apply(t, m, `
flowLogs:
- name: sel
  filePath: sel.log
  includeFilters: [{source_pod: ["ns-a/"]}, {verdict: [DROPPED]}]
  excludeFilters: [{source_pod: ["ns-c/"], verdict: [DROPPED]}]
`)
	var want []*flowpb.Flow
	for i, c := range []struct {
		ns, verdict string
		in          bool
	}{
		{"ns-a", "FORWARDED", true},  // first include filter
		{"ns-b", "FORWARDED", false}, // no include filter
		{"ns-b", "DROPPED", true},    // second include filter
		{"ns-c", "DROPPED", false},   // included, but excluded (both fields of the exclude filter)
		{"ns-c", "FORWARDED", false}, // neither
	} {
		f := flowOf(i, c.ns, c.verdict)
		m.Export(f)
		if c.in {
			want = append(want, f)
		}
	}
	stop(m)
	got := readLines(t, filepath.Join(m.opts.Dir, "sel.log"))
	if len(got) != len(want) {
		t.Fatalf("%d lines, want %d", len(got), len(want))
	}
	for i := range got {
		if !proto.Equal(got[i].GetFlow(), want[i]) {
			t.Errorf("line %d: %v, want %v", i+1, got[i].GetFlow(), want[i])
		}
	}
}

// The field mask keeps the named fields and nothing else; the flow handed in
// is not changed (it is shared with every other consumer).
func TestFieldMask(t *testing.T) {
	m, _ := newTestManager(t, 0)
	apply(t, m, `flowLogs: [{name: m, filePath: m.log, fieldMask: [source.namespace, source.pod_name, destination, verdict, l4.TCP.destination_port]}]`)
	f := flowOf(1, "ns-a", "DROPPED")
	before := proto.Clone(f)
	m.Export(f)
	stop(m)
	got := readLines(t, filepath.Join(m.opts.Dir, "m.log"))
	if len(got) != 1 {
		t.Fatalf("%d lines, want 1", len(got))
	}
	want := &flowpb.Flow{
		Source:      &flowpb.Endpoint{Namespace: "ns-a", PodName: "client"},
		Destination: f.Destination,
		Verdict:     flowpb.Verdict_DROPPED,
		L4:          &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{DestinationPort: 80}}},
	}
	if !proto.Equal(got[0].GetFlow(), want) {
		t.Errorf("masked flow\n%v\nwant\n%v", got[0].GetFlow(), want)
	}
	if !proto.Equal(f, before) {
		t.Error("the mask changed the flow it was given")
	}
}

// A flow lacking a masked message gets none, not an empty one.
func TestFieldMaskAbsentMessage(t *testing.T) {
	mk, err := newMask([]string{"l4.UDP.source_port", "source.pod_name"})
	if err != nil {
		t.Fatal(err)
	}
	f := flowOf(1, "ns-a", "FORWARDED") // TCP
	f.Source = nil
	if got := mk.apply(f); !proto.Equal(got, &flowpb.Flow{L4: &flowpb.Layer4{}}) {
		t.Errorf("got %v, want only an empty l4 (the oneof is not UDP)", got)
	}
}

// Rotation at the size limit keeps the newest backups; no line is split across
// two files, and compressed backups hold whole lines too.
func TestRotation(t *testing.T) {
	for _, compress := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "gzip"}[compress]
		t.Run(name, func(t *testing.T) {
			m, _ := newTestManager(t, 1<<16)
			apply(t, m, "flowLogs: [{name: r, filePath: r.log, fileMaxSizeMb: 1, fileMaxBackups: 2, fileCompress: "+
				map[bool]string{false: "false", true: "true"}[compress]+"}]")
			const n = 6000 // about 4 MB of lines: three rotations at 1 MB
			for i := range n {
				m.Export(flowOf(i, "ns-a", "FORWARDED"))
			}
			stop(m)
			if d := counter(m, "dropped", "r"); d != 0 {
				t.Fatalf("%v flows dropped; the queue holds all %d", d, n)
			}
			var files []string
			eventually(t, "2 backups, compressed when asked", func() bool {
				files, _ = filepath.Glob(filepath.Join(m.opts.Dir, "r*"))
				backups := 0
				for _, f := range files {
					if strings.HasSuffix(f, ".gz") == compress && f != filepath.Join(m.opts.Dir, "r.log") {
						backups++
					}
				}
				return len(files) == 3 && backups == 2 // the mill compresses and prunes in the background
			})
			last := -1
			slices.Sort(files) // backups are named by rotation time, which sorts before "r.log"
			for _, f := range files {
				fi, err := os.Stat(f)
				if err != nil {
					t.Fatal(err)
				}
				if !compress && fi.Size() > 1<<20 {
					t.Errorf("%s has %d bytes, above the 1 MB limit", f, fi.Size())
				}
				lines := readLines(t, f)
				if len(lines) == 0 {
					t.Fatalf("%s is empty", f)
				}
				// Consecutive flows across the kept files: nothing lost at a rotation.
				for _, r := range lines {
					i := int(r.GetFlow().GetTime().GetNanos() / 1000)
					if last >= 0 && i != last+1 {
						t.Fatalf("%s: flow %d follows flow %d", f, i, last)
					}
					last = i
				}
			}
			if last != n-1 {
				t.Errorf("the newest file ends with flow %d, want %d", last, n-1)
			}
		})
	}
}

// Flows after an exporter's end are not written.
func TestEnd(t *testing.T) {
	m, _ := newTestManager(t, 0)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	apply(t, m, `flowLogs: [{name: over, filePath: over.log, end: "`+past+`"}, {name: live, filePath: live.log, end: "`+future+`"}]`)
	m.Export(flowOf(1, "ns-a", "FORWARDED"))
	stop(m)
	if got := readLines(t, filepath.Join(m.opts.Dir, "live.log")); len(got) != 1 {
		t.Errorf("live.log has %d lines, want 1", len(got))
	}
	if _, err := os.Stat(filepath.Join(m.opts.Dir, "over.log")); !os.IsNotExist(err) {
		t.Errorf("over.log written after its end (stat: %v)", err)
	}
}

// A writer that cannot write (a FIFO nobody reads: the kernel blocks it) makes
// Export drop and count, never wait; every flow offered is either written or
// counted as dropped, and memory holds at most the queue.
func TestStalledWriterDropsAndCounts(t *testing.T) {
	const queue = 64
	m, _ := newTestManager(t, queue)
	fifo := filepath.Join(m.opts.Dir, "stalled.log")
	if err := unix.Mkfifo(fifo, 0o640); err != nil {
		t.Fatal(err)
	}
	// A reader that does not read: opening for writing succeeds, writes block
	// once the pipe's buffer (64 KiB) is full.
	rd, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	apply(t, m, "flowLogs: [{name: stalled, filePath: stalled.log}]")

	const n = 20000 // ~13 MB of lines: far more than the pipe and the queue hold
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			m.Export(flowOf(i, "ns-a", "FORWARDED"))
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("Export blocked behind a stalled writer")
	}
	dropped := counter(m, "dropped", "stalled")
	if dropped < n-queue-1000 { // at most the queue, the pipe's 64 KiB and a batch got through
		t.Fatalf("%v of %d flows dropped; the stalled writer took more than its queue", dropped, n)
	}
	if l := len(m.running()[0].queue); l > queue {
		t.Fatalf("queue holds %d flows, above its %d", l, queue)
	}

	// Unstall: read everything; stop writes what was queued.
	if err := unix.SetNonblock(int(rd.Fd()), false); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() {
		var all []byte
		buf := make([]byte, 1<<16)
		for {
			k, err := rd.Read(buf)
			all = append(all, buf[:k]...)
			if err != nil {
				got <- all
				return
			}
		}
	}()
	stop(m) // closes the writer's end: the reader sees EOF
	lines := decodeLines(t, "fifo", <-got)
	written := counter(m, "written", "stalled")
	if float64(len(lines)) != written || written+dropped != n {
		t.Errorf("%d lines read, %v written + %v dropped; want lines = written and written + dropped = %d", len(lines), written, dropped, n)
	}
}

// A full disk is an error counted per flow and logged once, not a crash; no
// torn line is left behind, and the exporter writes again once there is room.
func TestFullDisk(t *testing.T) {
	testenv.RequireRoot(t)
	m, logs := newTestManager(t, 1<<15)
	if err := unix.Mount("tmpfs", m.opts.Dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a 256 KiB tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(m.opts.Dir, unix.MNT_DETACH) })
	filler := filepath.Join(m.opts.Dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 128<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	apply(t, m, "flowLogs: [{name: full, filePath: full.log}]")
	const n = 2000 // ~1.3 MB of lines into ~128 KiB of room
	for i := range n {
		m.Export(flowOf(i, "ns-a", "FORWARDED"))
	}
	eventually(t, "the queue written out", func() bool {
		return counter(m, "written", "full")+counter(m, "writeErrors", "full") == n
	})
	if counter(m, "writeErrors", "full") == 0 {
		t.Fatal("no write error counted on a full disk")
	}
	if c := strings.Count(logs.String(), "writing flows failed"); c != 1 {
		t.Errorf("write failure logged %d times, want once:\n%s", c, logs)
	}

	// Room again: the next flows are written, and that is said.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	before := counter(m, "written", "full")
	m.Export(flowOf(n, "ns-a", "FORWARDED"))
	eventually(t, "a write after the disk has room", func() bool { return counter(m, "written", "full") == before+1 })
	// A disk that is nearly full takes a small batch now and then: the
	// failure is still one line, and so is the recovery.
	if c := strings.Count(logs.String(), "writing flows again"); c != 1 {
		t.Errorf("recovery logged %d times, want once:\n%s", c, logs)
	}
	stop(m)
	for _, r := range readLines(t, filepath.Join(m.opts.Dir, "full.log")) {
		if r.GetFlow() == nil {
			t.Fatal("a line without a flow")
		}
	}
}
