package batch

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/internal/cli"
)

// NewCommand returns `probe batch`: targets from the arguments, or one per line on
// stdin (or --file), results as JSON lines on stdout in input order. It exits 0
// when every target was probed, whatever the verdicts, and 1 on bad input, before
// probing anything.
func NewCommand() *cobra.Command {
	opts := DefaultOptions()
	var file string
	var session bool
	protocol := string(opts.Protocol)
	cmd := &cobra.Command{
		Use:   "batch [host:port ...]",
		Short: "Probes many targets concurrently and prints one JSON result per target",
		Long: `Probes every target concurrently, each bounded by --timeout, and prints one JSON line per
target, in input order: {"target","host","port","protocol","verdict","detail","latency_ms"}.
Verdicts: connected, refused, timeout, dns, other, unknown (as agnhost connect's words).

Targets come from the arguments, or else one per line from --file or stdin:
  host:port [tcp|udp|sctp]
  {"target":"host:port","protocol":"udp","payload":"hostname"}

With --session it answers many batches, one at a time, until stdin closes: each
input line is a request {"id","timeout","parallel","protocol","udp_data","sctp_data",
"targets":[...]} (empty fields: the flags' values), each answered by one line
{"id","results":[...]} or {"id","error"}. One exec then serves a whole test run.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			stderr := cmd.ErrOrStderr()
			opts.Protocol = connect.Protocol(protocol)
			if err := opts.Validate(); err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
				return cli.Exit(1)
			}
			if session {
				if file != "" || len(args) > 0 {
					fmt.Fprintf(stderr, "UNKNOWN: --session reads its requests from stdin: drop --file and the targets\n")
					return cli.Exit(1)
				}
				if err := Serve(cmd.Context(), cmd.InOrStdin(), cmd.OutOrStdout(), opts); err != nil {
					fmt.Fprintf(stderr, "OTHER: %v\n", err)
					return cli.Exit(1)
				}
				return nil
			}
			targets, err := readTargets(cmd.InOrStdin(), file, args)
			if err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
				return cli.Exit(1)
			}
			enc := json.NewEncoder(cmd.OutOrStdout())
			enc.SetEscapeHTML(false)
			if err := Run(cmd.Context(), targets, opts, func(r Result) error { return enc.Encode(r) }); err != nil {
				fmt.Fprintf(stderr, "OTHER: %v\n", err)
				return cli.Exit(1)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&opts.Timeout, "timeout", opts.Timeout, "Deadline of each attempt (must be positive)")
	f.IntVar(&opts.Parallel, "parallel", opts.Parallel, "Maximum attempts in flight")
	f.StringVar(&protocol, "protocol", protocol, "Protocol for targets that name none: tcp, udp, sctp or icmp")
	f.StringVar(&opts.UDPPayload, "udp-data", opts.UDPPayload, "The UDP payload sent to targets that name none")
	f.StringVar(&opts.SCTPPayload, "sctp-data", opts.SCTPPayload, "The SCTP payload sent to targets that name none")
	f.BoolVar(&session, "session", false, "Answer batch requests (JSON lines) from stdin until it closes, one line each")
	f.StringVarP(&file, "file", "f", "", `Read targets from this file ("-" or empty: stdin) when no arguments are given`)
	return cmd
}

func readTargets(stdin io.Reader, file string, args []string) ([]Target, error) {
	if len(args) > 0 {
		if file != "" {
			return nil, fmt.Errorf("--file=%s: give targets either as arguments or in a file, not both", file)
		}
		return ParseTargets(strings.NewReader(strings.Join(args, "\n")))
	}
	r := stdin
	if file != "" && file != "-" {
		fh, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("--file: %w", err)
		}
		defer fh.Close()
		r = fh
	}
	return ParseTargets(r)
}
