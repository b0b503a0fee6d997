package perf

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/internal/cli"
)

// NewCommand returns `probe perf` (the client) with `probe perf serve` under it.
// Exit codes: 0 measured (failed transactions are counted in the result), 1 bad
// input (before any traffic) or nothing could be measured.
func NewCommand() *cobra.Command {
	o := DefaultOptions()
	var test, output string
	cmd := &cobra.Command{
		Use:   "perf --test TCP_RR|TCP_CRR|TCP_STREAM|UDP_RR --target host:port",
		Short: "Measures a path with netperf's TCP_RR, TCP_CRR, TCP_STREAM and UDP_RR against `probe perf serve`",
		Long: `Runs one of netperf's tests against a "probe perf serve" server for --warmup plus --duration,
with --parallel workers, and prints transactions/s, per-transaction min/p50/p90/p99 latency in
microseconds and, for TCP_STREAM, Gbit/s, as an aligned line (-o text) or one JSON object (-o json).
  TCP_RR      one connection, request/response transactions (1 byte each way by default)
  TCP_CRR     connect, request, response, close per transaction
  TCP_STREAM  bulk send to the server (--request-size is the write size, default 128 KiB)
  UDP_RR      request/response datagrams; an answer missing after --loss-timeout is counted lost`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			stderr := cmd.ErrOrStderr()
			var err error
			if o.Test, err = ParseTest(test); err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: --test: %v\n", err)
				return cli.Exit(1)
			}
			if o.Test == TCPStream && !cmd.Flags().Changed("request-size") {
				o.RequestSize = DefaultStreamSize
			}
			if output != "text" && output != "json" {
				fmt.Fprintf(stderr, "UNKNOWN: --output=%s: use text or json\n", output)
				return cli.Exit(1)
			}
			if err := o.Validate(); err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
				return cli.Exit(1)
			}
			r, err := Run(cmd.Context(), o)
			if err != nil {
				fmt.Fprintf(stderr, "OTHER: %v\n", err)
				return cli.Exit(1)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetEscapeHTML(false)
				return enc.Encode(r)
			}
			fmt.Fprintln(out, TextHeader())
			fmt.Fprintln(out, r.Text())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&test, "test", string(o.Test), "TCP_RR, TCP_CRR, TCP_STREAM or UDP_RR")
	f.StringVar(&o.Target, "target", "", "The server, host:port (probe perf serve)")
	f.DurationVar(&o.Duration, "duration", o.Duration, "Measured time, after the warm-up")
	f.DurationVar(&o.Warmup, "warmup", o.Warmup, "Time run first and not measured")
	f.IntVar(&o.RequestSize, "request-size", o.RequestSize, "Request bytes per transaction (TCP_STREAM: bytes per write)")
	f.IntVar(&o.ResponseSize, "response-size", o.ResponseSize, "Response bytes per transaction")
	f.IntVar(&o.Parallel, "parallel", o.Parallel, "Concurrent workers, each with its own connection or socket")
	f.DurationVar(&o.LossTimeout, "loss-timeout", o.LossTimeout, "UDP_RR: wait this long for an answer before counting it lost")
	f.DurationVar(&o.DialTimeout, "connect-timeout", o.DialTimeout, "Deadline of each TCP connect")
	f.StringVarP(&output, "output", "o", "text", "text (an aligned line under a header) or json")
	cmd.AddCommand(newServeCommand())
	return cmd
}

func newServeCommand() *cobra.Command {
	port := DefaultPort
	cmd := &cobra.Command{
		Use:   "serve [--port N]",
		Short: "Answers probe perf clients on TCP and UDP port N until SIGTERM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger := cli.Logger(cmd.ErrOrStderr())
			if port < 1 || port > 65535 {
				logger.Printf("--port=%d: must be between 1 and 65535", port)
				return cli.Exit(1)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			ln, pc, err := Listen(port)
			if err != nil {
				logger.Print(err)
				return cli.Exit(1)
			}
			logger.Printf("Serving probe perf on TCP and UDP port %d.", port)
			srv := &Server{Log: logger}
			if err := srv.Serve(ctx, ln, pc); err != nil {
				logger.Print(err)
				return cli.Exit(1)
			}
			s := srv.Stats()
			logger.Printf("Stopped: %d connections, %d transactions, %d stream bytes, %d refused.",
				s.Connections, s.Transactions, s.StreamBytes, s.Refused)
			return nil
		},
	}
	cmd.Flags().IntVar(&port, "port", port, "TCP and UDP port to listen on")
	return cmd
}
