package kindcluster

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestProgressLines(t *testing.T) {
	var out bytes.Buffer
	start := time.Unix(1000, 0)
	p := NewProgress(&out, start)
	p.now = func() time.Time { return start.Add(75 * time.Second) }
	p.Step("kind: creating cluster %s", "flatnet")
	p.Info("docker network %s: removed", "flatnet-net")
	p.Warn("node %s moved", "w")
	p.Fail(&Problem{What: "busy", Hints: []string{"pick another", "or remove it"}})
	p.Fail(errors.New("plain"))
	want := "\033[1m[01:15] ==> kind: creating cluster flatnet\033[0m\n" +
		"[01:15]     docker network flatnet-net: removed\n" +
		"[01:15] WARN node w moved\n" +
		"\033[31m[01:15] ERROR busy\033[0m\n        pick another\n        or remove it\n" +
		"\033[31m[01:15] ERROR plain\033[0m\n"
	if out.String() != want {
		t.Fatalf("got\n%q\nwant\n%q", out.String(), want)
	}
}

func TestKindLogger(t *testing.T) {
	var out, transcript bytes.Buffer
	start := time.Unix(0, 0)
	p := NewProgress(&out, start)
	p.now = func() time.Time { return start }
	l := &kindLogger{p: p}
	l.setTranscript(&transcript)
	l.V(0).Infof("Creating cluster %q ...\n", "flatnet")
	l.V(0).Infof(" • %s  ...\n", "Preparing nodes 📦")
	l.V(0).Infof(" ✓ %s\n", "Preparing nodes 📦")
	l.V(0).Infof(" ✗ %s\n", "Starting control-plane")
	l.V(1).Info("debug detail")
	l.V(0).Info("")
	l.Warn("WARNING: Overriding docker network due to KIND_EXPERIMENTAL_DOCKER_NETWORK")
	l.Warn("WARNING: Here be dragons! This is not supported currently.")
	l.Warnf("cgroup v1 is deprecated in Kubernetes")
	l.V(0).Infof("Deleted nodes: %q", []string{"n1"})
	want := "[00:00]     kind: Preparing nodes 📦\n" +
		"[00:00] WARN kind: failed: Starting control-plane\n" +
		"[00:00] WARN kind: cgroup v1 is deprecated in Kubernetes\n" +
		"[00:00]     kind: Deleted nodes: [\"n1\"]\n"
	if out.String() != want {
		t.Fatalf("shown\n%s\nwant\n%s", out.String(), want)
	}
	wantT := "Creating cluster \"flatnet\" ...\n • Preparing nodes 📦  ...\n ✓ Preparing nodes 📦\n ✗ Starting control-plane\n" +
		"debug detail\n\nWARNING: Overriding docker network due to KIND_EXPERIMENTAL_DOCKER_NETWORK\n" +
		"WARNING: Here be dragons! This is not supported currently.\ncgroup v1 is deprecated in Kubernetes\nDeleted nodes: [\"n1\"]\n"
	if transcript.String() != wantT {
		t.Fatalf("transcript\n%q\nwant\n%q", transcript.String(), wantT)
	}
}
