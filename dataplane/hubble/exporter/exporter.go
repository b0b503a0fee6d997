// Package exporter writes flows to files on the node, as Hubble's dynamic flow
// log exporter (Cilium's pkg/hubble/exporter) and ACNS container network logs
// do: each configured exporter appends the flows its include/exclude
// FlowFilters select, cut down to its field mask, as JSON lines of
// observer.GetFlowsResponse (what `hubble observe -o json` prints), to a file
// rotated by size with a number of (optionally gzipped) backups, until its end
// time. The set of exporters comes from a file (a mounted ConfigMap) that the
// Manager reloads when it changes, without a restart; a bad file is refused
// whole and the running exporters stay as they were.
//
// The flow path never waits for a disk: each exporter has a bounded queue and
// its own writer, and a flow that finds the queue full is dropped and counted.
package exporter

import (
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/cilium/lumberjack/v2"
	"google.golang.org/protobuf/encoding/protojson"
)

// batchBytes is how much the writer gathers before one write: whole lines only,
// so a rotation never splits a line between two files.
const batchBytes = 64 << 10

// view is what an exporter selects and how it cuts flows: a config change that
// keeps the file swaps it in place, without reopening anything.
type view struct {
	config FlowLog
	match  func(*flowpb.Flow) bool
	mask   mask
}

// active says whether the exporter still writes at now.
func (v *view) active(now time.Time) bool {
	return v.config.End == nil || now.Before(*v.config.End)
}

// fileExporter is one running exporter: a queue and a goroutine appending its
// flows to a rotated file.
type fileExporter struct {
	name    string
	file    FlowLog // the config it was started with: its file and rotation
	log     *slog.Logger
	metrics *exporterMetrics
	view    atomic.Pointer[view]
	queue   chan *flowpb.Flow

	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

// startExporter starts the writer; the file is opened by its first write.
func startExporter(v *view, queueLen int, log *slog.Logger, m *exporterMetrics) *fileExporter {
	e := &fileExporter{
		name:    v.config.Name,
		file:    v.config,
		log:     log.With("exporter", v.config.Name, "file", v.config.FilePath),
		metrics: m,
		queue:   make(chan *flowpb.Flow, queueLen),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	e.view.Store(v)
	go e.run()
	return e
}

// sameFile says whether config c can be served by e by swapping its view: the
// same file, rotated the same way.
func (e *fileExporter) sameFile(c FlowLog) bool {
	f := e.file
	return f.FilePath == c.FilePath && f.FileMaxSizeMB == c.FileMaxSizeMB &&
		f.FileMaxBackups == c.FileMaxBackups && f.FileCompress == c.FileCompress
}

// offer queues f if the exporter selects it, never waiting: a full queue drops
// it, counted.
func (e *fileExporter) offer(f *flowpb.Flow, now time.Time) {
	v := e.view.Load()
	if !v.active(now) || !v.match(f) {
		return
	}
	select {
	case e.queue <- f:
	default:
		e.metrics.dropped.Inc()
	}
}

// close stops the writer once the flows already queued are written, and closes
// the file.
func (e *fileExporter) close() {
	e.once.Do(func() { close(e.stop) })
	<-e.stopped
}

func (e *fileExporter) run() {
	defer close(e.stopped)
	w := lineWriter{e: e, file: e.openFile()}
	defer func() {
		if err := w.file.Close(); err != nil {
			e.log.Error("closing the flow log", "error", err)
		}
	}()
	for {
		select {
		case f := <-e.queue:
			w.add(f)
			// Gather what else is queued, then write it in one go.
			for drained := false; !drained && len(w.buf) < batchBytes; {
				select {
				case f := <-e.queue:
					w.add(f)
				default:
					drained = true
				}
			}
			w.flush()
		case <-e.stop:
			for {
				select {
				case f := <-e.queue:
					w.add(f)
					if len(w.buf) >= batchBytes {
						w.flush()
					}
				default:
					w.flush()
					return
				}
			}
		}
	}
}

// openFile is the rotating file; nothing is opened before the first write.
func (e *fileExporter) openFile() *lumberjack.Logger {
	c := e.file
	return &lumberjack.Logger{
		Filename:   c.FilePath,
		MaxSize:    c.FileMaxSizeMB,
		MaxBackups: c.FileMaxBackups,
		Compress:   c.FileCompress,
		FileMode:   0o640, // flows name pods and addresses: not for every user of the node
	}
}

// lineWriter encodes flows into lines and writes them in batches, counting what
// is written and what a write error loses. A failing file (a full disk, which
// may also take a small batch now and then) is logged at most once per
// errorLogEvery, and its recovery once after each such line: never a flood.
type lineWriter struct {
	e    *fileExporter
	file *lumberjack.Logger
	buf  []byte
	n    int // flows in buf

	lastErrorLog time.Time
	lostSince    int  // flows lost since the last error line
	errorLogged  bool // an error line awaits its recovery line
}

const errorLogEvery = time.Minute

var lineFormat = protojson.MarshalOptions{UseProtoNames: true} // as observerpb's MarshalJSON

func (w *lineWriter) add(f *flowpb.Flow) {
	v := w.e.view.Load()
	resp := &observerpb.GetFlowsResponse{
		ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: v.mask.apply(f)},
		NodeName:      f.GetNodeName(),
		Time:          f.GetTime(),
	}
	var err error
	if w.buf, err = lineFormat.MarshalAppend(w.buf, resp); err != nil {
		// A flow the API cannot encode is a bug, not a disk problem: drop it loudly.
		w.e.log.Error("encoding a flow", "error", err)
		w.e.metrics.writeErrors.Inc()
		return
	}
	w.buf = append(w.buf, '\n')
	w.n++
}

func (w *lineWriter) flush() {
	if w.n == 0 {
		return
	}
	n, err := w.file.Write(w.buf)
	if err != nil {
		if n > 0 {
			w.cut(n)
		}
		w.e.metrics.writeErrors.Add(float64(w.n))
		w.lostSince += w.n
		if now := time.Now(); now.Sub(w.lastErrorLog) >= errorLogEvery {
			w.e.log.Error("writing flows failed; they are dropped and counted until writes succeed again",
				"lost", w.lostSince, "error", err)
			w.lastErrorLog, w.lostSince, w.errorLogged = now, 0, true
		}
	} else {
		w.e.metrics.written.Add(float64(w.n))
		if w.errorLogged {
			w.e.log.Info("writing flows again")
			w.errorLogged = false
		}
	}
	w.buf, w.n = w.buf[:0], 0
}

// cut takes the n bytes of a failed write back off the end of the file (a full
// disk took part of a batch), so that no torn line is left for the next write
// to run into. The file is reopened: lumberjack's handle may not be O_APPEND,
// and would write past the cut, leaving a hole.
func (w *lineWriter) cut(n int) {
	if err := w.file.Close(); err != nil {
		w.e.log.Error("closing the flow log after a failed write", "error", err)
	}
	w.file = w.e.openFile()
	name := w.e.file.FilePath
	fi, err := os.Stat(name)
	if err == nil {
		err = os.Truncate(name, max(0, fi.Size()-int64(n)))
	}
	if err != nil {
		w.e.log.Error("removing a partly written batch of flows", "error", err)
	}
}
