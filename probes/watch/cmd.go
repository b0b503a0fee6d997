package watch

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/internal/cli"
)

// NewCommand returns `probe watch`: it prints "READY <time>" once the path is in the
// starting state, then "CHANGED <time> attempts=<n>" when it flips, times in
// RFC 3339 with nanoseconds. Exit codes: 0 changed, 1 bad input or an attempt that
// was neither open nor blocked, 2 not in the starting state, 3 no change before the
// deadline.
func NewCommand() *cobra.Command {
	o := DefaultOptions()
	var protocol, until string
	cmd := &cobra.Command{
		Use:   "watch host:port --until blocked|open",
		Short: "Opens a new connection every interval and reports when reachability flips",
		Long: `Checks that host:port is in the state opposite to --until, prints READY, then opens a new
connection every --interval (each bounded by --timeout) and prints CHANGED with the start time of
the first attempt in the new state, once --confirm more attempts agree. "blocked" means the first
packet was dropped (TIMEOUT); a refused connection or any other error stops the watch.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			o.Dest = args[0]
			var err error
			if o.Protocol, err = connect.ParseProtocol(protocol); err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: --protocol: %v\n", err)
				return cli.Exit(1)
			}
			if o.Until, err = ParseState(until); err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
				return cli.Exit(1)
			}
			if err := o.Validate(); err != nil {
				fmt.Fprintf(stderr, "UNKNOWN: %v\n", err)
				return cli.Exit(1)
			}
			ch, err := Run(cmd.Context(), o, func() {
				fmt.Fprintf(stdout, "READY %s\n", time.Now().Format(time.RFC3339Nano))
			})
			var notInitial *NotInitialError
			switch {
			case errors.As(err, &notInitial):
				fmt.Fprintf(stderr, "NOT-%s: %v\n", notInitial.Want, err)
				return cli.Exit(2)
			case errors.Is(err, ErrUnchanged):
				fmt.Fprintf(stderr, "UNCHANGED: still %s after %s and %d attempts\n", o.Until.other(), o.Deadline, ch.Attempts)
				return cli.Exit(3)
			case err != nil:
				fmt.Fprintf(stderr, "OTHER: %v\n", err)
				return cli.Exit(1)
			}
			fmt.Fprintf(stdout, "CHANGED %s attempts=%d\n", ch.At.Format(time.RFC3339Nano), ch.Attempts)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&until, "until", string(o.Until), "The state to wait for: blocked or open")
	f.StringVar(&protocol, "protocol", string(o.Protocol), "tcp, udp or sctp")
	f.DurationVar(&o.Interval, "interval", o.Interval, "Time between the starts of two attempts")
	f.DurationVar(&o.Timeout, "timeout", o.Timeout, "Deadline of one attempt (under 1s)")
	f.IntVar(&o.Confirm, "confirm", o.Confirm, "Attempts after the first in the new state that must agree")
	f.DurationVar(&o.Deadline, "deadline", o.Deadline, "Give up after this long")
	return cmd
}
