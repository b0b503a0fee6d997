package exporter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/flatnet/flatnet/dataplane/flows"
)

// Defaults of Options.
const (
	DefaultQueueLength = 4096
	DefaultPoll        = 10 * time.Second
)

// Options configure a Manager.
type Options struct {
	// ConfigFile is the config's path (a key of a mounted ConfigMap). A missing
	// file means no exporters.
	ConfigFile string
	// Dir is the one directory flow logs may be written to (subdirectories too).
	Dir string
	// QueueLength is how many flows each exporter holds for its writer before it
	// drops (DefaultQueueLength when <= 0): memory is bounded by it.
	QueueLength int
	// Poll is how often the file is re-read besides on change notices, in case a
	// notice is missed (DefaultPoll when <= 0).
	Poll time.Duration
}

// Manager runs the exporters a config file describes, as Cilium's dynamic
// exporter does: Export hands them every flow, Run applies the file as it
// changes.
type Manager struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics

	// exporters is what Export reads, without a lock: the flow path never
	// waits for a reload.
	exporters atomic.Pointer[[]*fileExporter]

	mu       sync.Mutex // serialises Reload and Apply
	byName   map[string]*fileExporter
	lastRead []byte // the file's content at the last Reload that read it
	readOnce bool
	retry    bool // lastRead is a valid config the node could not apply yet
}

// NewManager checks opts; the Manager has no exporters until Run or Apply.
func NewManager(log *slog.Logger, opts Options) (*Manager, error) {
	if !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("flow log directory %q: want an absolute path, e.g. /var/log/flatnet/flows", opts.Dir)
	}
	opts.Dir = filepath.Clean(opts.Dir)
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("flow log directory: %w", err)
	}
	if opts.QueueLength <= 0 {
		opts.QueueLength = DefaultQueueLength
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultPoll
	}
	m := &Manager{opts: opts, log: log.With("component", "flow-export"), byName: map[string]*fileExporter{}}
	m.metrics = newMetrics(m.running)
	m.exporters.Store(&[]*fileExporter{})
	return m, nil
}

// Collectors are the Manager's metrics, to register with the agent's.
func (m *Manager) Collectors() []prometheus.Collector { return m.metrics.collectors() }

func (m *Manager) running() []*fileExporter { return *m.exporters.Load() }

// Export offers f to every exporter; it never blocks. f is read-only.
func (m *Manager) Export(f *flowpb.Flow) {
	es := *m.exporters.Load()
	if len(es) == 0 {
		return
	}
	now := time.Now()
	for _, e := range es {
		e.offer(f, now)
	}
}

// Observe is Export as a flows.Run observer: the flow in Hubble's form, which
// is only built when some exporter runs.
func (m *Manager) Observe(r *flows.Response) {
	if len(*m.exporters.Load()) > 0 {
		m.Export(r.Proto())
	}
}

// Run applies the config file now and whenever it changes until ctx ends, then
// stops the exporters once they have written what they hold. A refused file is
// logged and counted; the exporters stay as they were.
func (m *Manager) Run(ctx context.Context) error {
	defer m.stopAll()
	// A ConfigMap volume changes by swapping a symlink in the file's directory
	// (..data), so the directory is watched, not the file; from before the
	// first read, so no change falls between the two.
	events, stopWatch := m.watch()
	defer stopWatch()
	m.reloadLogged()
	poll := time.NewTicker(m.opts.Poll)
	defer poll.Stop()
	var settle <-chan time.Time // a burst of notices makes one reload
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-events:
			if !ok {
				events = nil // the watcher gave up: the poll goes on
				continue
			}
			if settle == nil {
				settle = time.After(50 * time.Millisecond)
			}
		case <-settle:
			settle = nil
			m.reloadLogged()
		case <-poll.C:
			m.reloadLogged()
		}
	}
}

// watch returns the change notices of the config file's directory; with none
// (no inotify, no directory) the poll alone reloads.
func (m *Manager) watch() (<-chan fsnotify.Event, func()) {
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(filepath.Dir(m.opts.ConfigFile)); err != nil {
			w.Close()
		}
	}
	if err != nil {
		m.log.Warn("cannot watch the flow log config; re-reading it every poll instead", "file", m.opts.ConfigFile, "poll", m.opts.Poll, "error", err)
		return nil, func() {}
	}
	go func() {
		for err := range w.Errors {
			m.log.Warn("watching the flow log config", "error", err)
		}
	}()
	return w.Events, func() { w.Close() }
}

func (m *Manager) reloadLogged() {
	if err := m.Reload(); err != nil {
		m.log.Error("flow log config refused; the exporters stay as they were", "file", m.opts.ConfigFile, "error", err)
	}
}

// Reload reads the config file and, if it changed since the last read, applies
// it. An error (unreadable, invalid, a file that cannot be opened) leaves the
// exporters as they were and is counted as a failed reconfiguration. A refused
// config is not read again until it changes; one the node could not apply
// (its files could not be opened) is retried at every Reload, and reported
// again only when the config changes.
func (m *Manager) Reload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, err := os.ReadFile(m.opts.ConfigFile)
	if errors.Is(err, fs.ErrNotExist) {
		data, err = nil, nil // no config: no exporters
	}
	if err != nil {
		m.metrics.reconfigurations.WithLabelValues("failure").Inc()
		return fmt.Errorf("reading %s: %w", m.opts.ConfigFile, err)
	}
	same := m.readOnce && bytes.Equal(data, m.lastRead)
	if same && !m.retry {
		return nil
	}
	m.lastRead, m.readOnce, m.retry = data, true, false
	cfg, err := Parse(data, m.opts.Dir)
	if err == nil {
		err = m.applyLocked(cfg)
		m.retry = err != nil
	}
	if err != nil {
		if same {
			return nil // reported when it was first tried
		}
		m.metrics.reconfigurations.WithLabelValues("failure").Inc()
		return fmt.Errorf("%s: %w", m.opts.ConfigFile, err)
	}
	return nil
}

// Apply makes cfg the running set of exporters: new ones start, changed ones
// change (in place when they keep their file), absent ones stop after writing
// what they hold. Nothing changes if any part of cfg cannot be applied.
func (m *Manager) Apply(cfg Config) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applyLocked(cfg)
}

func (m *Manager) applyLocked(cfg Config) error {
	// Everything that can fail happens before anything changes.
	views := make([]*view, len(cfg.FlowLogs))
	var errs []error
	for i, c := range cfg.FlowLogs {
		v, err := newView(c)
		if err == nil {
			if old := m.byName[c.Name]; old == nil || !old.sameFile(c) {
				err = m.checkFile(c.FilePath)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("flowLogs[%d] (%q): %w", i, c.Name, err))
		}
		views[i] = v
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}

	next := make(map[string]*fileExporter, len(views))
	var retired []*fileExporter
	for _, v := range views {
		name := v.config.Name
		old := m.byName[name]
		switch {
		case old == nil:
			next[name] = startExporter(v, m.opts.QueueLength, m.log, m.metrics.forExporter(name))
			m.log.Info("flow log exporter started", "exporter", name, "file", v.config.FilePath)
			m.metrics.reconfigurations.WithLabelValues("add").Inc()
		case old.sameFile(v.config):
			next[name] = old
			if !sameConfig(old.view.Load().config, v.config) {
				old.view.Store(v)
				m.log.Info("flow log exporter changed", "exporter", name)
				m.metrics.reconfigurations.WithLabelValues("update").Inc()
			}
		default:
			next[name] = startExporter(v, m.opts.QueueLength, m.log, m.metrics.forExporter(name))
			retired = append(retired, old)
			m.log.Info("flow log exporter reopened", "exporter", name, "file", v.config.FilePath)
			m.metrics.reconfigurations.WithLabelValues("update").Inc()
		}
	}
	for name, old := range m.byName {
		if next[name] == nil {
			retired = append(retired, old)
			m.log.Info("flow log exporter stopped", "exporter", name)
			m.metrics.reconfigurations.WithLabelValues("remove").Inc()
		}
	}
	m.publish(next)
	// Only once Export no longer reaches them: what they hold is written.
	for _, e := range retired {
		e.close()
	}
	m.metrics.lastApplied.SetToCurrentTime()
	return nil
}

// publish makes next what Export offers flows to, in a stable order.
func (m *Manager) publish(next map[string]*fileExporter) {
	m.byName = next
	es := make([]*fileExporter, 0, len(next))
	for _, e := range next {
		es = append(es, e)
	}
	slices.SortFunc(es, func(a, b *fileExporter) int { return strings.Compare(a.name, b.name) })
	m.exporters.Store(&es)
}

func (m *Manager) stopAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.byName
	m.publish(nil)
	for _, e := range old {
		e.close()
	}
}

// checkFile makes sure path can be appended to before an exporter is promised
// to write it, creating nothing (a refused config leaves no trace): an existing
// file must open for appending and be no symlink; otherwise its nearest
// existing directory must be writable. Either way that directory must still be
// inside Dir once symlinks are resolved.
func (m *Manager) checkFile(path string) error {
	root, err := filepath.EvalSymlinks(m.opts.Dir)
	if err != nil {
		return fmt.Errorf("filePath: the flow log directory: %w", err)
	}
	dir := filepath.Dir(path)
	for dir != m.opts.Dir {
		if _, err := os.Lstat(dir); err == nil {
			break
		}
		dir = filepath.Dir(dir)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("filePath: resolving %s: %w", dir, err)
	}
	if rel, err := filepath.Rel(root, real); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("filePath: %s leads out of %s through a symlink", path, m.opts.Dir)
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
			return fmt.Errorf("filePath: %s cannot be created in %s: %w", path, dir, err)
		}
		return nil
	}
	// O_NONBLOCK: a FIFO without a reader fails instead of hanging the reload.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("filePath: opening it to append: %w", err)
	}
	return f.Close()
}

// newView compiles c's filters and mask (Parse has checked them).
func newView(c FlowLog) (*view, error) {
	match, err := compileFilters(c.IncludeFilters, c.ExcludeFilters)
	if err != nil {
		return nil, err
	}
	mk, err := newMask(c.FieldMask)
	if err != nil {
		return nil, fmt.Errorf("fieldMask: %w", err)
	}
	return &view{config: c, match: match, mask: mk}, nil
}

// sameConfig says whether a and b configure the same exporter.
func sameConfig(a, b FlowLog) bool {
	sameEnd := (a.End == nil) == (b.End == nil) && (a.End == nil || a.End.Equal(*b.End))
	return sameEnd && a.Name == b.Name && a.FilePath == b.FilePath && slices.Equal(a.FieldMask, b.FieldMask) &&
		sameFilters(a.IncludeFilters, b.IncludeFilters) && sameFilters(a.ExcludeFilters, b.ExcludeFilters) &&
		a.FileMaxSizeMB == b.FileMaxSizeMB && a.FileMaxBackups == b.FileMaxBackups && a.FileCompress == b.FileCompress
}

func sameFilters(a, b []*flowpb.FlowFilter) bool {
	return slices.EqualFunc(a, b, func(x, y *flowpb.FlowFilter) bool { return proto.Equal(x, y) })
}
