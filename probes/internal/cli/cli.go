// Package cli runs a cobra command tree the way agnhost's entry point does
// (k8s.io/component-base/cli.Run), so flag errors, exit codes and accepted logging
// flags match agnhost byte for byte where tests can see them.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// ExitError ends the process with Code. The command has already printed whatever it
// had to say, so Execute prints nothing more.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Exit returns an *ExitError with code.
func Exit(code int) error { return &ExitError{Code: code} }

// Execute runs root with args and returns the process exit code. Like agnhost: flag
// names may use '_' for '-', the klog flags (-v, --vmodule, --log-flush-frequency) are
// accepted, usage is not printed on errors, and any other error is printed as
// "Error: <err>" on stderr with exit code 1.
func Execute(root *cobra.Command, args []string, stderr io.Writer) int {
	root.SetArgs(args)
	root.SetErr(stderr)
	root.SetGlobalNormalizationFunc(wordSepNormalize)
	root.SilenceUsage = true
	root.SilenceErrors = true
	addLoggingFlags(root.PersistentFlags())

	err := root.Execute()
	var exit *ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.Code
	}
	fmt.Fprintf(stderr, "Error: %v\n", err)
	if hint := dashHint(args); hint != "" {
		fmt.Fprintln(stderr, hint)
	}
	return 1
}

func wordSepNormalize(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
}

// addLoggingFlags accepts the logging flags agnhost inherits from component-base
// (same names, types and help), so command lines written for agnhost parse. The
// probe has no verbose logging, so their values are ignored.
func addLoggingFlags(fs *pflag.FlagSet) {
	if fs.Lookup("v") != nil {
		return
	}
	fs.Duration("log-flush-frequency", 5*time.Second, "Maximum number of seconds between log flushes")
	fs.VarP(&ignored{typ: "Level"}, "v", "v", "number for the log level verbosity")
	fs.Var(&ignored{typ: "moduleSpec"}, "vmodule", "comma-separated list of pattern=N settings for file-filtered logging (only works for the default text log format)")
}

// ignored is a flag value that is parsed and dropped.
type ignored struct{ typ, val string }

func (v *ignored) String() string     { return v.val }
func (v *ignored) Set(s string) error { v.val = s; return nil }
func (v *ignored) Type() string       { return v.typ }

// dashHint explains an argument that looks like a flag typed with a typographic
// dash (as in "–verbose" pasted from a web page), which cobra counts as a positional
// argument.
func dashHint(args []string) string {
	for _, a := range args {
		if strings.HasPrefix(a, "\u2013") || strings.HasPrefix(a, "\u2014") {
			return fmt.Sprintf("%q starts with a typographic dash, not \"--\", so it was read as an argument; retype it with two ASCII hyphens or drop it", a)
		}
	}
	return ""
}

// Logger returns a logger writing lines shaped like agnhost's: its standard log
// output goes through klog, so every line starts with klog's header
// ("I1126 05:57:02.282354    9040 log.go:244] "). Log scrapers written for agnhost
// then parse ours.
func Logger(w io.Writer) *log.Logger {
	return log.New(&klogWriter{w: w, pid: os.Getpid()}, "", 0)
}

type klogWriter struct {
	w   io.Writer
	pid int
}

func (k *klogWriter) Write(p []byte) (int, error) {
	now := time.Now()
	line := fmt.Sprintf("I%s %7d log.go:244] %s", now.Format("0102 15:04:05.000000"), k.pid, p)
	if !strings.HasSuffix(line, "\n") {
		line += "\n"
	}
	if _, err := io.WriteString(k.w, line); err != nil {
		return 0, err
	}
	return len(p), nil
}
