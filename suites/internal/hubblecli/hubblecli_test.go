package hubblecli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// repoRoot is the repository holding this package (suites/internal/hubblecli).
const repoRoot = "../../.."

func writeGoMod(t *testing.T, require string) string {
	t.Helper()
	dir := t.TempDir()
	body := "module example.com/x\n\ngo 1.26\n\nrequire (\n\tgithub.com/spf13/pflag v1.0.10\n" + require + ")\n"
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRequiredVersionIsGoModsCiliumRequire(t *testing.T) {
	dir := writeGoMod(t, "\tgithub.com/cilium/cilium v1.19.4\n")
	if v, err := requiredVersion(filepath.Join(dir, "go.mod")); err != nil || v != "v1.19.4" {
		t.Errorf("requiredVersion = %q, %v; want v1.19.4", v, err)
	}
	dir = writeGoMod(t, "")
	if _, err := requiredVersion(filepath.Join(dir, "go.mod")); err == nil || !strings.Contains(err.Error(), "requires no github.com/cilium/cilium") {
		t.Errorf("a go.mod without Cilium: err %v", err)
	}
}

// Locate refuses a binary that is not the upstream CLI (this test's own
// binary) and a path where there is none, saying how to get it.
func TestLocateRefusesWhatIsNotUpstreamHubble(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvPath, self)
	if _, err := Locate(repoRoot, "localhost:1", t.TempDir()); err == nil || !strings.Contains(err.Error(), "not the upstream hubble CLI github.com/cilium/cilium/hubble") {
		t.Errorf("Locate(%s) = %v; want it refused as not hubble", self, err)
	}
	t.Setenv(EnvPath, filepath.Join(t.TempDir(), "hubble"))
	if _, err := Locate(repoRoot, "localhost:1", t.TempDir()); err == nil || !strings.Contains(err.Error(), "make tools") {
		t.Errorf("Locate of a missing binary = %v; want the way to build it", err)
	}
}

// realCLI is the hubble `make tools` built (or FLATNET_HUBBLE_CLI's); the
// tests that run it skip, saying so, where it was not built.
func realCLI(t *testing.T, root string) CLI {
	t.Helper()
	path := os.Getenv(EnvPath)
	if path == "" {
		path = DefaultPath
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(repoRoot, path)
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("FLATNET_REQUIRE_HUBBLE_CLI") == "1" { // make test: it may not skip
			t.Fatalf("no hubble CLI at %s: make tools builds it (or set %s)", path, EnvPath)
		}
		t.Skipf("no hubble CLI at %s: make tools builds it (or set %s)", path, EnvPath)
	}
	t.Setenv(EnvPath, path)
	cli, err := Locate(root, "localhost:1", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func TestLocateHoldsTheCLIToGoModsCiliumRelease(t *testing.T) {
	cli := realCLI(t, repoRoot)
	if want, err := requiredVersion(filepath.Join(repoRoot, "go.mod")); err != nil || cli.Version != want {
		t.Errorf("Version %q, go.mod's %q (%v)", cli.Version, want, err)
	}
	if _, err := Locate(writeGoMod(t, "\tgithub.com/cilium/cilium v1.18.0\n"), "localhost:1", t.TempDir()); err == nil || !strings.Contains(err.Error(), "v1.18.0") {
		t.Errorf("a CLI of another release than go.mod's: err %v", err)
	}
}

// What the CLI prints with -o json reads back as the GetFlowsResponses it
// was given (through --input-file, which the CLI filters itself: here
// --verdict DROPPED keeps one of two), both from Run and from Start.
func TestJSONOutputReadsBackAsGetFlowsResponses(t *testing.T) {
	cli := realCLI(t, repoRoot)
	at := time.Date(2026, 12, 6, 8, 0, 0, 123456789, time.UTC)
	dropped := &observerpb.GetFlowsResponse{NodeName: "kind/worker", Time: timestamppb.New(at), ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: &flowpb.Flow{
		Time: timestamppb.New(at), Verdict: flowpb.Verdict_DROPPED, DropReasonDesc: flowpb.DropReason_POLICY_DENIED,
		IP:               &flowpb.IP{Source: "10.224.1.5", Destination: "10.224.2.7", IpVersion: flowpb.IPVersion_IPv4},
		L4:               &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 80, Flags: &flowpb.TCPFlags{SYN: true}}}},
		Source:           &flowpb.Endpoint{Namespace: "ns", PodName: "client"},
		Destination:      &flowpb.Endpoint{Namespace: "ns", PodName: "server"},
		TrafficDirection: flowpb.TrafficDirection_INGRESS,
		IngressDeniedBy:  []*flowpb.Policy{{Kind: "CiliumNetworkPolicy", Namespace: "ns", Name: "default-deny"}},
		NodeName:         "kind/worker",
	}}}
	forwarded := proto.Clone(dropped).(*observerpb.GetFlowsResponse)
	forwarded.GetFlow().Verdict, forwarded.GetFlow().DropReasonDesc, forwarded.GetFlow().IngressDeniedBy = flowpb.Verdict_FORWARDED, 0, nil
	var in []byte
	for _, r := range []*observerpb.GetFlowsResponse{forwarded, dropped} {
		b, err := protojson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		in = append(append(in, b...), '\n')
	}
	file := filepath.Join(t.TempDir(), "flows.json")
	if err := os.WriteFile(file, in, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	r, err := cli.Run(ctx, "observe", "--input-file", file, "--verdict", "DROPPED", "-o", "json")
	if err != nil || r.ExitCode != 0 {
		t.Fatalf("%v: %s", err, r)
	}
	got, err := ParseLines(r.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !proto.Equal(got[0], dropped) {
		t.Errorf("observe --verdict DROPPED -o json read back as %v; want only %v", got, dropped)
	}

	s, err := cli.Start(ctx, "observe", "--input-file", file, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	var lines []Line
	deadline := time.Now().Add(30 * time.Second)
	for err == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		lines, err = s.Lines()
	}
	if err == nil || !strings.Contains(err.Error(), "ended") {
		t.Errorf("a CLI that ended (its input read): Lines err = %v; want it said", err)
	}
	if len(lines) != 2 || !proto.Equal(lines[0].Resp, forwarded) || !proto.Equal(lines[1].Resp, dropped) || lines[0].At.IsZero() {
		t.Errorf("Start read %v; want the two flows, in order, with their arrival times", lines)
	}
}

func TestParseLinesNamesALineThatIsNoResponse(t *testing.T) {
	_, err := ParseLines("{\"flow\":{\"verdict\":\"DROPPED\"}}\n\nnot json\n")
	if err == nil || !strings.Contains(err.Error(), "line 3") || !strings.Contains(err.Error(), "not json") {
		t.Errorf("err = %v; want line 3 named, with its text", err)
	}
	if _, err := ParseLines(`{"flow":{"verdict":"DROPPED","no_such_field":1}}`); err == nil {
		t.Error("a field Hubble's API does not have was accepted")
	}
}
