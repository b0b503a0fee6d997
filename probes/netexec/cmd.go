package netexec

import (
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/internal/cli"
)

// NewCommand returns the `netexec` subcommand with agnhost's flags.
func NewCommand() *cobra.Command {
	var (
		cfg           = Config{HTTPPort: 8080, UDPPort: 8081, SCTPPort: -1}
		udpAddrs      string
		delayShutdown int
	)
	cmd := &cobra.Command{
		Use:   "netexec",
		Short: "Creates HTTP(S), UDP, and (optionally) SCTP servers with various endpoints",
		Long: `Starts an HTTP(S) server on --http-port with agnhost netexec's endpoints: /, /clientip,
/serverport, /header, /dial, /echo, /exit, /healthz, /readyz, /hostname, /hostName, /redirect and
/shutdown; a UDP server on --udp-port (-1 disables it) answering "hostname", "echo <msg>",
"clientip" and "serverport"; and, with --sctp-port, an SCTP server answering the same.
/shell and /upload answer 501: use kubectl exec instead.`,
		Args: cobra.MaximumNArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			logger := cli.Logger(cmd.ErrOrStderr())
			if udpAddrs != "" {
				cfg.UDPListenAddresses = strings.Split(udpAddrs, ",")
			}
			host, err := os.Hostname()
			if err != nil {
				logger.Printf("Error occurred: failed to get hostname:%v", err)
				return cli.Exit(1)
			}
			cfg.Hostname, cfg.Log = host, logger
			term := make(chan os.Signal, 1)
			signal.Notify(term, syscall.SIGTERM)
			srv, err := Start(cfg)
			if err != nil {
				logger.Print(err)
				return cli.Exit(1)
			}
			select {
			case err := <-srv.Err():
				logger.Print(err)
				return cli.Exit(1)
			case <-term:
				// /readyz turns 503 while the pod is removed from endpoints.
				srv.Drain()
				if delayShutdown > 0 {
					logger.Printf("Sleeping %d seconds before terminating...", delayShutdown)
					time.Sleep(time.Duration(delayShutdown) * time.Second)
				}
				return nil
			case e := <-srv.Exits():
				if e.Grace > 0 {
					ctx, cancel := context.WithTimeout(context.Background(), e.Grace)
					err := srv.Shutdown(ctx)
					cancel()
					logger.Printf("Graceful shutdown completed with: %v", err)
				}
				return cli.Exit(e.Code)
			}
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.HTTPPort, "http-port", cfg.HTTPPort, "HTTP Listen Port")
	f.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "File containing an x509 certificate for HTTPS. (CA cert, if any, concatenated after server cert)")
	f.StringVar(&cfg.TLSKeyFile, "tls-private-key-file", "", "File containing an x509 private key matching --tls-cert-file")
	f.IntVar(&cfg.UDPPort, "udp-port", cfg.UDPPort, "UDP Listen Port")
	f.IntVar(&cfg.SCTPPort, "sctp-port", cfg.SCTPPort, "SCTP Listen Port")
	f.StringVar(&cfg.HTTPOverride, "http-override", "", "Override the HTTP handler to always respond as if it were a GET with this path & params")
	f.StringVar(&udpAddrs, "udp-listen-addresses", "", "A comma separated list of ip addresses the udp servers listen from")
	f.IntVar(&delayShutdown, "delay-shutdown", 0, "Number of seconds to delay shutdown when receiving SIGTERM.")
	return cmd
}
