// Package pause keeps a container alive until it is told to stop, as agnhost's pause
// does, recording the signal in the termination message.
package pause

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/internal/cli"
)

// NewCommand returns the `pause` subcommand. It exits 1 on SIGINT and 2 on SIGTERM,
// writing "exiting because of signal ..." to $TERMINATION_MESSAGE_PATH
// (default /dev/termination-log) and to stdout.
func NewCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "pause",
		Short: "Pauses the execution",
		Long:  `Pauses the execution. Useful for keeping the containers running, so other commands can be executed.`,
		Args:  cobra.MaximumNArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, "Paused")
			sigCh := make(chan os.Signal, 1)
			signal.Notify(sigCh, syscall.SIGINT, syscall.SIGTERM)
			fmt.Fprintln(out, "Signals registered")
			sig := <-sigCh

			path := os.Getenv("TERMINATION_MESSAGE_PATH")
			if path == "" {
				path = "/dev/termination-log"
			}
			msg := fmt.Sprintf("exiting because of signal %q\n", sig)
			// Best effort, as in agnhost: outside Kubernetes the path may not exist.
			_ = os.WriteFile(path, []byte(msg), 0o644)
			fmt.Fprint(out, msg)
			if sig == syscall.SIGINT {
				return cli.Exit(1)
			}
			return cli.Exit(2)
		},
	}
}
