package endpointapi

import (
	"slices"
	"testing"
	"time"
)

// TestAddPhasesRoundTrip: what FormatAddPhases writes ParseAddPhases reads back,
// and every malformed value is refused whole.
func TestAddPhasesRoundTrip(t *testing.T) {
	in := []AddPhase{{"prepare", 812 * time.Microsecond}, {"ipam", 2100 * time.Microsecond}, {"setup", 0}}
	v := FormatAddPhases(in)
	if v != "prepare=0.000812,ipam=0.0021,setup=0" {
		t.Errorf("FormatAddPhases = %q", v)
	}
	out, err := ParseAddPhases(v)
	if err != nil || !slices.Equal(out, in) {
		t.Errorf("ParseAddPhases(%q) = %v, %v; want %v", v, out, err, in)
	}
	for _, bad := range []string{"ipam", "=1", "IPAM=1", "ipam=-1", "ipam=x", "ipam=1,,setup=2", "a=1,b=1,c=1,d=1,e=1,f=1,g=1,h=1,i=1", "ipam=1e9"} {
		if got, err := ParseAddPhases(bad); err == nil {
			t.Errorf("ParseAddPhases(%q) = %v: want an error", bad, got)
		}
	}
}
