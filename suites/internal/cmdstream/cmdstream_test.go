package cmdstream

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func sh(script string) func(context.Context) *exec.Cmd {
	return func(ctx context.Context) *exec.Cmd { return exec.CommandContext(ctx, "sh", "-c", script) }
}

// A command that keeps printing: its lines come as printed, with their times,
// before it ends; Stop ends it and says what it wrote to stderr.
func TestLinesComeWhileTheCommandRuns(t *testing.T) {
	s, err := Start(context.Background(), sh("echo one; echo oops >&2; echo; sleep 0.3; echo two; exec sleep 60"))
	if err != nil {
		t.Fatal(err)
	}
	begun := time.Now()
	var got []Line
	for len(got) < 2 {
		select {
		case l := <-s.Lines:
			got = append(got, l)
		case <-time.After(10 * time.Second):
			t.Fatalf("lines so far %v: the second never came", got)
		}
	}
	if got[0].Text != "one" || got[1].Text != "two" {
		t.Errorf("lines %q, %q: want one, two (the empty line left out)", got[0].Text, got[1].Text)
	}
	if !got[1].At.After(got[0].At) || got[0].At.Before(begun.Add(-time.Second)) {
		t.Errorf("times %v, %v: want each line's own, in order", got[0].At, got[1].At)
	}
	if e := s.Ended(); e != "" {
		t.Errorf("the command ended (%s) while it sleeps", e)
	}
	if stderr := s.Stop(); stderr != "oops\n" {
		t.Errorf("Stop: stderr %q, want %q", stderr, "oops\n")
	}
	if _, open := <-s.Lines; open {
		t.Error("Lines still open after Stop")
	}
	if e := s.Ended(); !strings.Contains(e, "killed") {
		t.Errorf("Ended after Stop: %q, want the kill", e)
	}
}

// A command that ends by itself closes Lines and says how it ended.
func TestEndedCommand(t *testing.T) {
	s, err := Start(context.Background(), sh("echo last; exit 3"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for l := range s.Lines {
		got = append(got, l.Text)
	}
	if len(got) != 1 || got[0] != "last" {
		t.Errorf("lines %q, want [last]", got)
	}
	if e := s.Ended(); e != "exit status 3" {
		t.Errorf("Ended %q, want exit status 3", e)
	}
}

func TestStartRefusesWhatCannotRun(t *testing.T) {
	_, err := Start(context.Background(), func(ctx context.Context) *exec.Cmd {
		return exec.CommandContext(ctx, "/nonexistent/flatnet-cli")
	})
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/flatnet-cli") {
		t.Errorf("err %v: want one naming the command", err)
	}
}
