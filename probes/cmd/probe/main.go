// Command probe is flatnet's agnhost-compatible probe: connect, serve-hostname,
// netexec and pause behave as agnhost's, batch probes many targets in one
// process, and watch times a change of reachability. Installed as /agnhost it
// answers to agnhost's command lines.
package main

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/flatnet/flatnet/probes/batch"
	"github.com/flatnet/flatnet/probes/connect"
	"github.com/flatnet/flatnet/probes/internal/cli"
	"github.com/flatnet/flatnet/probes/netexec"
	"github.com/flatnet/flatnet/probes/pause"
	"github.com/flatnet/flatnet/probes/perf"
	"github.com/flatnet/flatnet/probes/serve"
	"github.com/flatnet/flatnet/probes/watch"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "development"

func main() {
	os.Exit(cli.Execute(newRoot(filepath.Base(os.Args[0])), os.Args[1:], os.Stderr))
}

func newRoot(argv0 string) *cobra.Command {
	// agnhost's root command is called "app"; usage and errors show that name.
	name := "probe"
	if argv0 == "agnhost" {
		name = "app"
	}
	root := &cobra.Command{Use: name, Version: version}
	root.AddCommand(
		connect.NewCommand(),
		serve.NewCommand(),
		netexec.NewCommand(),
		pause.NewCommand(),
		batch.NewCommand(),
		watch.NewCommand(),
		perf.NewCommand(),
	)
	return root
}
