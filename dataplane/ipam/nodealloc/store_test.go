package nodealloc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flatnet/flatnet/dataplane/ipam"
)

var block = ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.0.32"), Size: 10}

func att(i int) Attachment { return Attachment{ContainerID: fmt.Sprintf("c%03d", i), IfName: "eth0"} }

// TestMain doubles as the helper process for the crash tests: when
// FLATNET_NODEALLOC_HELPER is set the binary allocates once and, at the hook
// named by the variable, says READY and waits to be killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FLATNET_NODEALLOC_HELPER_DIR"); dir != "" {
		s := New(dir)
		s.beforeRename = func() {
			fmt.Println("READY")
			select {} // hold the lock, new state in the temp file, until SIGKILL
		}
		_, _, err := s.Allocate(context.Background(), "node-a", block, Attachment{ContainerID: "victim", IfName: "eth0"})
		fmt.Println("helper finished unexpectedly:", err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

func TestAllocateIsIdempotentAndReleaseFrees(t *testing.T) {
	ctx := context.Background()
	s := New(t.TempDir())

	ip1, created, err := s.Allocate(ctx, "node-a", block, att(1))
	if err != nil || !created {
		t.Fatalf("first allocate: %v created=%v", err, created)
	}
	if !block.Contains(ip1) {
		t.Fatalf("allocated %s outside block %s", ip1, block)
	}
	again, created, err := s.Allocate(ctx, "node-a", block, att(1))
	if err != nil || created || again != ip1 {
		t.Fatalf("repeat allocate: %s created=%v err=%v, want %s created=false", again, created, err, ip1)
	}
	ip2, _, _ := s.Allocate(ctx, "node-a", block, att(2))
	if ip2 == ip1 {
		t.Fatalf("two attachments share %s", ip1)
	}
	// Same container, another interface, is another attachment.
	ip3, _, _ := s.Allocate(ctx, "node-a", block, Attachment{ContainerID: "c001", IfName: "net1"})
	if ip3 == ip1 || ip3 == ip2 {
		t.Fatalf("second interface of c001 got a taken address %s", ip3)
	}

	got, found, err := s.Release(ctx, att(1))
	if err != nil || !found || got != ip1 {
		t.Fatalf("release: %s found=%v err=%v", got, found, err)
	}
	if _, found, err := s.Release(ctx, att(1)); err != nil || found {
		t.Fatalf("second release: found=%v err=%v, want no-op", found, err)
	}
	if _, ok, _ := s.Get(ctx, att(1)); ok {
		t.Fatal("released attachment still holds an address")
	}
	// Survives a new Store on the same dir (a new plugin process).
	if ip, ok, _ := New(s.Dir()).Get(ctx, att(2)); !ok || ip != ip2 {
		t.Fatalf("fresh store: att 2 -> %s %v, want %s", ip, ok, ip2)
	}
}

func TestReleasedAddressIsNotReusedAtOnce(t *testing.T) {
	ctx := context.Background()
	s := New(t.TempDir())
	ip1, _, _ := s.Allocate(ctx, "node-a", block, att(1))
	s.Release(ctx, att(1))
	ip2, _, _ := s.Allocate(ctx, "node-a", block, att(2))
	if ip2 == ip1 {
		t.Fatalf("address %s handed out again right after release", ip1)
	}
}

func TestExhaustionNamesNodeSizeAndFix(t *testing.T) {
	ctx := context.Background()
	s := New(t.TempDir())
	seen := map[netip.Addr]bool{}
	for i := range block.Size {
		ip, _, err := s.Allocate(ctx, "node-a", block, att(i))
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		seen[ip] = true
	}
	if len(seen) != block.Size {
		t.Fatalf("%d distinct addresses for %d attachments", len(seen), block.Size)
	}
	_, _, err := s.Allocate(ctx, "node-a", block, att(99))
	var ex *ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("err = %v, want ExhaustedError", err)
	}
	for _, want := range []string{`node "node-a"`, "all 10 addresses", "blockSize", "maxPods"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("exhaustion error %q does not mention %q", err, want)
		}
	}
	// Freeing one makes room again.
	s.Release(ctx, att(3))
	if _, _, err := s.Allocate(ctx, "node-a", block, att(99)); err != nil {
		t.Fatalf("after a release: %v", err)
	}
}

func TestGCKeepsOnlyValidAttachments(t *testing.T) {
	ctx := context.Background()
	s := New(t.TempDir())
	for i := range 5 {
		s.Allocate(ctx, "node-a", block, att(i))
	}
	released, err := s.GC(ctx, []Attachment{att(1), att(3)})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 3 {
		t.Fatalf("released %d, want 3: %v", len(released), released)
	}
	left, _ := s.List(ctx)
	if len(left) != 2 || left[0].Attachment != att(1) || left[1].Attachment != att(3) {
		t.Fatalf("left after GC: %v", left)
	}
}

func TestConcurrentAllocationsNeverShareAnAddress(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	big := ipam.Block{Index: -1, First: netip.MustParseAddr("10.224.1.0"), Size: 250}
	var wg sync.WaitGroup
	ips := make([]netip.Addr, 200)
	errs := make([]error, 200)
	for i := range 200 {
		wg.Go(func() {
			ips[i], _, errs[i] = New(dir).Allocate(ctx, "node-a", big, att(i))
		})
	}
	wg.Wait()
	owner := map[netip.Addr]int{}
	for i, ip := range ips {
		if errs[i] != nil {
			t.Fatalf("allocation %d: %v", i, errs[i])
		}
		if j, dup := owner[ip]; dup {
			t.Fatalf("attachments %d and %d both got %s", i, j, ip)
		}
		owner[ip] = i
	}
	if all, _ := New(dir).List(ctx); len(all) != 200 {
		t.Fatalf("state holds %d allocations, want 200", len(all))
	}
}

func TestCorruptStateIsAnErrorNotAReset(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := New(dir).Allocate(ctx, "node-a", block, att(1))
	if err == nil || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("err = %v, want a parse error telling what to do", err)
	}
}

func TestLockWaitEndsWithContext(t *testing.T) {
	dir := t.TempDir()
	s := New(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err = New(dir).Allocate(ctx, "node-a", block, att(1))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled while the lock is held", err)
	}
}

// TestKilledWriterLeavesConsistentState kills -9 a process that holds the
// lock with its new state written to the temp file but not yet renamed: the
// old state must survive intact, the lock must be free, and the orphan temp
// file must be cleaned up by the next writer.
func TestKilledWriterLeavesConsistentState(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := New(dir)
	before, _, err := s.Allocate(ctx, "node-a", block, att(1))
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLATNET_NODEALLOC_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "READY" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q, %v", line, err)
	}
	temps, _ := filepath.Glob(filepath.Join(dir, tempPrefix+"*"))
	if len(temps) != 1 {
		t.Fatalf("helper mid-write should leave exactly one temp file, found %v", temps)
	}
	if err := cmd.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	// The lock died with the process; a bounded wait turns a leaked lock into a failure, not a hang.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	all, err := s.List(ctx)
	if err != nil {
		t.Fatalf("after the kill: %v", err)
	}
	if len(all) != 1 || all[0].Attachment != att(1) || all[0].IP != before {
		t.Fatalf("state after the kill = %v, want only att 1 -> %s", all, before)
	}
	if _, ok, _ := s.Get(ctx, Attachment{ContainerID: "victim", IfName: "eth0"}); ok {
		t.Fatal("the killed writer's half-done reservation became visible")
	}
	if _, _, err := s.Allocate(ctx, "node-a", block, att(2)); err != nil {
		t.Fatal(err)
	}
	if temps, _ := filepath.Glob(filepath.Join(dir, tempPrefix+"*")); len(temps) != 0 {
		t.Fatalf("orphan temp files left: %v", temps)
	}
}
