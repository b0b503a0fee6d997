package agent

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/flatnet/flatnet/dataplane/cniconf"
)

// PluginBinaries are the CNI binaries the agent image ships and installs:
// flatnet, and CNI's portmap, which flatnet runs for pods with hostPorts.
// (flatnet sets up the pod's loopback itself; a node upgraded from a release
// that chained CNI's loopback keeps the binary it installed then.)
var PluginBinaries = []string{cniconf.PluginType, "portmap"}

// InstallPlugins copies each binary of PluginBinaries from srcDir into
// binDir. A binary is replaced by rename, never rewritten in place, so a
// plugin process running at that moment keeps its old file, and one that
// starts finds either the old or the new one, whole.
func InstallPlugins(srcDir, binDir string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("create CNI bin dir %s: %w", binDir, err)
	}
	for _, name := range PluginBinaries {
		src := filepath.Join(srcDir, name)
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("read plugin %s from the agent image: %w", src, err)
		}
		if err := writeAtomic(filepath.Join(binDir, name), b, 0o755); err != nil {
			return fmt.Errorf("install CNI plugin %s: %w", name, err)
		}
	}
	return nil
}

// InstallConflist writes the conflist into confDir (only when it changed).
// Written last: the container runtime reports the node network-ready as soon
// as a conflist appears, so it must only appear once the plugin binaries and
// the agent socket are there.
func InstallConflist(confDir string, conflist []byte) (changed bool, err error) {
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return false, fmt.Errorf("create CNI conf dir %s: %w", confDir, err)
	}
	path := filepath.Join(confDir, cniconf.ConflistFile)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, conflist) {
		return false, nil
	}
	if err := writeAtomic(path, conflist, 0o644); err != nil {
		return false, fmt.Errorf("install conflist: %w", err)
	}
	return true, nil
}

// writeAtomic replaces path with data via a synced temp file in the same dir.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	return replaceFile(path, data, mode, true)
}

// replaceFile replaces path with data via a temp file in the same dir, renamed
// over it: a process killed at any point leaves the old or the new file.
// synced also flushes the data to disk before the rename, so that a machine
// crash cannot leave an empty file either.
func replaceFile(path string, data []byte, mode os.FileMode, synced bool) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return fmt.Errorf("create temp file in %s: %w", dir, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, bytes.NewReader(data)); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if synced {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return fmt.Errorf("fsync %s: %w", tmp.Name(), err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	return nil
}
