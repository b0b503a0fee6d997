package connect

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/internal/cli"
)

// NewCommand returns the `connect` subcommand: agnhost's flags, output and exit codes.
// On success it prints nothing and exits 0; on failure it prints the verdict word
// (TIMEOUT, REFUSED, DNS, OTHER, UNKNOWN) and a detail on stderr and exits 1.
func NewCommand() *cobra.Command {
	var (
		timeout  time.Duration
		protocol string
		udpData  string
		sctpData string
	)
	cmd := &cobra.Command{
		Use:   "connect [host:port]",
		Short: "Attempts a TCP, UDP or SCTP connection and returns useful errors",
		Long: `Tries to open a TCP, UDP or SCTP connection to the given host and port. On error it prints an error message prefixed with a specific fixed string that test cases can check for:

* UNKNOWN - Generic/unknown (non-network) error (eg, bad arguments)
* TIMEOUT - The connection attempt timed out
* DNS - An error in DNS resolution
* REFUSED - Connection refused
* OTHER - Other networking error (eg, "no route to host")`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			stderr := cmd.ErrOrStderr()
			proto, err := ParseProtocol(protocol)
			if err != nil {
				// agnhost prints "Unsupported protocol\n<value>" and exits 1; the
				// flag and the allowed values follow on the same line.
				fmt.Fprintf(stderr, "Unsupported protocol\n%s: --protocol must be tcp, udp, sctp or icmp\n", protocol)
				return cli.Exit(1)
			}
			payload := udpData
			if proto == SCTP {
				payload = sctpData
			}
			out := Probe(cmd.Context(), Request{Dest: args[0], Protocol: proto, Timeout: timeout, Payload: payload})
			if out.Verdict == Connected {
				return nil
			}
			fmt.Fprintln(stderr, out.Line())
			return cli.Exit(1)
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "Maximum time before returning an error")
	// Word for word as agnhost's help (the tests compare them); icmp (a host, or
	// host:0) is this probe's addition.
	cmd.Flags().StringVar(&protocol, "protocol", "tcp", "The protocol to use to perform the connection, can be tcp, udp or sctp")
	cmd.Flags().StringVar(&udpData, "udp-data", DefaultPayload, "The UDP payload send to the server")
	cmd.Flags().StringVar(&sctpData, "sctp-data", DefaultPayload, "The SCTP payload send to the server")
	return cmd
}
