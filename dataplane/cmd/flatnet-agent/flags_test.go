package main

import (
	"strings"
	"testing"
)

// A bad --hubble-metrics stops the agent at start with an error naming the flag
// and what is wrong in it; a good one, Cilium's own example included, is taken.
func TestHubbleMetricsFlag(t *testing.T) {
	for value, want := range map[string][]string{
		"flow:sourceContext=nmespace": {"--hubble-metrics", `unknown context "nmespace"`},
		"flow dns":                    {"--hubble-metrics", `metric "dns"`, "DNS visibility"},
		"drop:reporter=client":        {"--hubble-metrics", `unknown option "reporter"`},
	} {
		cmd := command()
		cmd.SetArgs([]string{"--hubble-metrics", value})
		err := cmd.Execute()
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("--hubble-metrics %q: error %v, want one saying %q", value, err, w)
			}
		}
	}
	for _, value := range []string{"", "flow:sourceContext=namespace;destinationContext=namespace drop tcp policy"} {
		cmd := command()
		// No cluster here: a value that parses gets as far as the kubeconfig.
		cmd.SetArgs([]string{"--hubble-metrics", value, "--kubeconfig", "/nonexistent/kubeconfig"})
		if err := cmd.Execute(); err == nil || strings.Contains(err.Error(), "hubble") || !strings.Contains(err.Error(), "kubeconfig") {
			t.Errorf("--hubble-metrics %q: error %v, want only the missing kubeconfig", value, err)
		}
	}
}
