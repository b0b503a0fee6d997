package perf

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"time"
)

// window is the measured part of a run: transactions started at or after from
// and finished by to count.
type window struct{ start, from, to time.Time }

func (w window) counts(begin, end time.Time) bool { return !begin.Before(w.from) && !end.After(w.to) }

// worker is what one connection or socket measured.
type worker struct {
	latencies []time.Duration
	lost      int64
	errors    int64
	firstErr  error
	// TCP_STREAM: bytes written in the window, confirmed by the server at acked.
	bytes int64
	acked time.Time
}

func (w *worker) fail(err error) {
	w.errors++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

// Run runs o.Test against o.Target and returns the measurement. It fails only on
// bad options or when nothing at all could be measured; transactions that failed
// mid-run are counted in Result.Errors.
func Run(ctx context.Context, o Options) (Result, error) {
	if err := o.Validate(); err != nil {
		return Result{}, err
	}
	var waited time.Duration
	if o.Test == TCPCRR {
		var err error
		if waited, err = drainTimeWait(ctx, 65*time.Second); err != nil {
			return Result{}, err
		}
	}
	now := time.Now()
	w := window{start: now, from: now.Add(o.Warmup), to: now.Add(o.Warmup + o.Duration)}
	ctx, cancel := context.WithDeadline(ctx, w.to.Add(o.DialTimeout+o.LossTimeout))
	defer cancel()
	workers := make([]worker, o.Parallel)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			switch o.Test {
			case TCPRR:
				workers[i].tcpRR(ctx, o, w)
			case TCPCRR:
				workers[i].tcpCRR(ctx, o, w)
			case TCPStream:
				workers[i].tcpStream(ctx, o, w)
			case UDPRR:
				workers[i].udpRR(ctx, o, w)
			}
		})
	}
	wg.Wait()
	r, err := summarise(o, w, workers)
	r.TimeWaitWaitedS = waited.Seconds()
	return r, err
}

func summarise(o Options, w window, workers []worker) (Result, error) {
	r := Result{
		Test: o.Test, Target: o.Target, Parallel: o.Parallel,
		RequestSize: o.RequestSize, Seconds: o.Duration.Seconds(),
	}
	var all []time.Duration
	var acked time.Time
	for _, wk := range workers {
		all = append(all, wk.latencies...)
		r.Lost += wk.lost
		r.Errors += wk.errors
		r.Bytes += wk.bytes
		if wk.firstErr != nil && r.FirstError == "" {
			r.FirstError = wk.firstErr.Error()
		}
		if wk.acked.After(acked) {
			acked = wk.acked
		}
	}
	why := ""
	if r.FirstError != "" {
		why = ": " + r.FirstError
	}
	if o.Test == TCPStream {
		if r.Bytes == 0 || acked.IsZero() {
			return r, fmt.Errorf("%s to %s: no data confirmed by the server%s", o.Test, o.Target, why)
		}
		// Until the server confirmed it: the drain of the socket buffers counts.
		r.Seconds = acked.Sub(w.from).Seconds()
		r.GbitPerS = float64(r.Bytes) * 8 / r.Seconds / 1e9
		return r, nil
	}
	r.ResponseSize = o.ResponseSize
	r.Transactions = int64(len(all))
	if r.Transactions == 0 {
		return r, fmt.Errorf("%s to %s: no transaction completed in %s (%d lost, %d errors)%s",
			o.Test, o.Target, o.Duration, r.Lost, r.Errors, why)
	}
	r.TransactionsPerS = float64(r.Transactions) / r.Seconds
	r.LatencyUS = summariseLatency(all)
	return r, nil
}

// summariseLatency sorts d and takes nearest-rank percentiles.
func summariseLatency(d []time.Duration) *Latency {
	slices.Sort(d)
	us := func(v time.Duration) float64 { return float64(v.Nanoseconds()) / 1e3 }
	rank := func(p float64) time.Duration {
		i := int(p/100*float64(len(d))+0.999999) - 1
		return d[min(max(i, 0), len(d)-1)]
	}
	var sum time.Duration
	for _, v := range d {
		sum += v
	}
	return &Latency{
		Min: us(d[0]), Mean: us(sum) / float64(len(d)),
		P50: us(rank(50)), P90: us(rank(90)), P99: us(rank(99)), Max: us(d[len(d)-1]),
	}
}

func dial(ctx context.Context, o Options, network string) (net.Conn, error) {
	d := net.Dialer{Timeout: o.DialTimeout}
	c, err := d.DialContext(ctx, network, o.Target)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", o.Target, err)
	}
	context.AfterFunc(ctx, func() { c.Close() })
	return c, nil
}

// exchange writes msg and reads a whole response into resp.
func exchange(c net.Conn, msg, resp []byte) error {
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("sending the request: %w", err)
	}
	if _, err := io.ReadFull(c, resp); err != nil {
		return fmt.Errorf("reading the response: %w", err)
	}
	return nil
}

func (wk *worker) tcpRR(ctx context.Context, o Options, w window) {
	c, err := dial(ctx, o, "tcp")
	if err != nil {
		wk.fail(err)
		return
	}
	defer c.Close()
	req, resp := make([]byte, o.RequestSize), make([]byte, o.ResponseSize)
	first := tcpHeader{o.Test, o.RequestSize, o.ResponseSize}.append(nil)
	first = append(first, req...)
	for msg := first; ; msg = req {
		begin := time.Now()
		if !begin.Before(w.to) {
			return
		}
		if err := exchange(c, msg, resp); err != nil {
			wk.fail(err)
			return
		}
		if end := time.Now(); w.counts(begin, end) {
			wk.latencies = append(wk.latencies, end.Sub(begin))
		}
	}
}

func (wk *worker) tcpCRR(ctx context.Context, o Options, w window) {
	resp := make([]byte, o.ResponseSize)
	msg := tcpHeader{o.Test, o.RequestSize, o.ResponseSize}.append(nil)
	msg = append(msg, make([]byte, o.RequestSize)...)
	for {
		begin := time.Now()
		if !begin.Before(w.to) || ctx.Err() != nil {
			return
		}
		c, err := dial(ctx, o, "tcp")
		if err == nil {
			err = exchange(c, msg, resp)
			c.Close()
		}
		if err != nil {
			wk.fail(err)
			// A refused or unreachable server must not turn the loop into a spin.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if end := time.Now(); w.counts(begin, end) {
			wk.latencies = append(wk.latencies, end.Sub(begin))
		}
	}
}

func (wk *worker) tcpStream(ctx context.Context, o Options, w window) {
	c, err := dial(ctx, o, "tcp")
	if err != nil {
		wk.fail(err)
		return
	}
	defer c.Close()
	if _, err := c.Write(tcpHeader{o.Test, o.RequestSize, 0}.append(nil)); err != nil {
		wk.fail(fmt.Errorf("sending the header: %w", err))
		return
	}
	buf := make([]byte, o.RequestSize)
	var total, atFrom int64
	counting := false
	for {
		now := time.Now()
		if !now.Before(w.to) {
			break
		}
		if !counting && !now.Before(w.from) {
			counting, atFrom = true, total
		}
		n, err := c.Write(buf)
		total += int64(n)
		if err != nil {
			wk.fail(fmt.Errorf("sending: %w", err))
			return
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		wk.fail(fmt.Errorf("half-closing: %w", err))
		return
	}
	ack := make([]byte, 8)
	if _, err := io.ReadFull(c, ack); err != nil {
		wk.fail(fmt.Errorf("reading the server's byte count: %w", err))
		return
	}
	wk.acked = time.Now()
	if got := int64(binary.BigEndian.Uint64(ack)); got != total {
		wk.fail(fmt.Errorf("the server received %d of the %d bytes sent", got, total))
		return
	}
	if counting {
		wk.bytes = total - atFrom
	}
}

func (wk *worker) udpRR(ctx context.Context, o Options, w window) {
	c, err := dial(ctx, o, "udp")
	if err != nil {
		wk.fail(err)
		return
	}
	defer c.Close()
	req := make([]byte, max(o.RequestSize, udpHeaderLen))
	resp := make([]byte, maxUDPSize)
	for seq := uint32(1); ; seq++ {
		begin := time.Now()
		if !begin.Before(w.to) || ctx.Err() != nil {
			return
		}
		udpRequest(req, seq, o.ResponseSize)
		if _, err := c.Write(req); err != nil {
			// An ICMP unreachable surfaces here as ECONNREFUSED on a connected socket.
			wk.fail(fmt.Errorf("sending: %w", err))
			time.Sleep(10 * time.Millisecond)
			continue
		}
		end, err := awaitAnswer(c, seq, begin.Add(o.LossTimeout), resp)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			if w.counts(begin, begin) {
				wk.lost++
			}
		case err != nil:
			wk.fail(err)
			time.Sleep(10 * time.Millisecond)
		case w.counts(begin, end):
			wk.latencies = append(wk.latencies, end.Sub(begin))
		}
	}
}

// awaitAnswer reads until the answer to seq, discarding late answers to earlier
// requests.
func awaitAnswer(c net.Conn, seq uint32, deadline time.Time, buf []byte) (time.Time, error) {
	c.SetReadDeadline(deadline)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return time.Time{}, err
			}
			return time.Time{}, fmt.Errorf("reading the answer: %w", err)
		}
		if n >= udpAnswerLen && binary.BigEndian.Uint32(buf) == seq {
			return time.Now(), nil
		}
	}
}
