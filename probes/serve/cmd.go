package serve

import (
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/internal/cli"
)

// terminationGrace is how long agnhost keeps serving after SIGTERM ("Awaiting pod
// deletion"), so in-flight probes during pod deletion still get answers.
const terminationGrace = 60 * time.Second

// NewCommand returns the `serve-hostname` subcommand with agnhost's flags.
func NewCommand() *cobra.Command {
	var cfg Config
	cmd := &cobra.Command{
		Use:   "serve-hostname",
		Short: "Serves the hostname",
		Long:  `Serves the hostname through HTTP / TCP / UDP on the given port.`,
		Args:  cobra.MaximumNArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			logger := cli.Logger(cmd.ErrOrStderr())
			if err := cfg.Validate(); err != nil {
				logger.Print(err)
				return cli.Exit(1)
			}
			host, err := os.Hostname()
			if err != nil {
				logger.Printf("Error from os.Hostname(): %s", err)
				return cli.Exit(1)
			}
			cfg.Hostname, cfg.Log = host, logger
			// Catch SIGTERM before listening so an early one is not lost.
			signals := make(chan os.Signal, 1)
			signal.Notify(signals, syscall.SIGTERM)
			srv, err := Start(cfg)
			if err != nil {
				logger.Print(err)
				return cli.Exit(1)
			}
			logger.Printf("Serving on port %d.\n", cfg.Port)
			select {
			case err := <-srv.Err():
				logger.Print(err)
				return cli.Exit(1)
			case sig := <-signals:
				logger.Printf("Shutting down after receiving signal: %s.\n", sig)
				logger.Printf("Awaiting pod deletion.\n")
				time.Sleep(terminationGrace)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&cfg.TCP, "tcp", false, "Serve raw over TCP.")
	cmd.Flags().BoolVar(&cfg.UDP, "udp", false, "Serve raw over UDP.")
	cmd.Flags().BoolVar(&cfg.HTTP, "http", true, "Serve HTTP.")
	cmd.Flags().BoolVar(&cfg.Close, "close", false, "Close connection per each HTTP request.")
	cmd.Flags().IntVar(&cfg.Port, "port", 9376, "Port number.")
	return cmd
}
