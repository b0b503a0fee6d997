package endpointapi

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// AddPhasesHeader on an ADD's PUT carries how long each of the plugin's steps
// before it took, as name=seconds pairs: "prepare=0.0008,ipam=0.0021,setup=0.0042".
// The agent publishes them (flatnet_cni_add_phase_seconds) beside its own share,
// so where an ADD's time goes is read from the node's metrics, not guessed.
const AddPhasesHeader = "Flatnet-Add-Phases"

// AddSchedHeader on an ADD's PUT carries, in the same format, how the plugin's
// process spent the ADD until the PUT as the kernel's scheduler counted it:
// "oncpu" (running) and "runqueue" (runnable, waiting for a CPU). Its phases'
// times are wall times: on a loaded node the runqueue wait says how much of them
// was waiting for a CPU, and not for a lock or the kernel.
const AddSchedHeader = "Flatnet-Add-Sched"

// AddPhase is one step of an ADD and how long it took.
type AddPhase struct {
	Name string
	Took time.Duration
}

// maxAddPhases bounds what the agent reads of one header.
const maxAddPhases = 8

// FormatAddPhases is the AddPhasesHeader value of phases.
func FormatAddPhases(phases []AddPhase) string {
	var b strings.Builder
	for i, p := range phases {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%s", p.Name, strconv.FormatFloat(p.Took.Seconds(), 'f', -1, 64))
	}
	return b.String()
}

// ParseAddPhases reads an AddPhasesHeader value; names are lower-case letters,
// durations non-negative seconds, at most maxAddPhases of them.
func ParseAddPhases(v string) ([]AddPhase, error) {
	if v == "" {
		return nil, nil
	}
	parts := strings.Split(v, ",")
	if len(parts) > maxAddPhases {
		return nil, fmt.Errorf("%s: %d phases, at most %d", AddPhasesHeader, len(parts), maxAddPhases)
	}
	out := make([]AddPhase, 0, len(parts))
	for _, p := range parts {
		name, secs, ok := strings.Cut(p, "=")
		if !ok || name == "" || len(name) > 16 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz") != "" {
			return nil, fmt.Errorf("%s: %q: want name=seconds, the name in lower-case letters", AddPhasesHeader, p)
		}
		s, err := strconv.ParseFloat(secs, 64)
		if err != nil || s < 0 || s > 3600 {
			return nil, fmt.Errorf("%s: %q: want name=seconds, 0 to 3600", AddPhasesHeader, p)
		}
		out = append(out, AddPhase{Name: name, Took: time.Duration(s * float64(time.Second))})
	}
	return out, nil
}
