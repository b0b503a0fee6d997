// Package testenv holds the few rules every privileged test in flatnet shares.
package testenv

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// RequireRoot skips t when the process is not root, unless FLATNET_REQUIRE_PRIVILEGED
// is set (as `make test` does): there a missing privilege is a failure, so a run that
// silently skipped the real-kernel tests can never pass as green.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FLATNET_REQUIRE_PRIVILEGED") != "" {
		t.Fatalf("this test needs root (netns, veth, BPF); FLATNET_REQUIRE_PRIVILEGED is set, so it may not be skipped")
	}
	t.Skip("needs root (netns, veth, BPF); run as root or via `make test`")
}

// BPFFS mounts a bpffs of the test's own on a temporary directory, unmounted
// when t ends, and returns the directory: what the test pins there meets no
// other test's maps nor the host's.
func BPFFS(t testing.TB) string {
	t.Helper()
	mnt := t.TempDir()
	if err := unix.Mount("bpf", mnt, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs on %s: %v", mnt, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	return mnt
}
