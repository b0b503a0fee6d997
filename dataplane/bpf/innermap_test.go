package bpf

import "testing"

func TestInnerMapSize(t *testing.T) {
	for _, c := range []struct {
		n     int
		limit uint32
		want  uint32
	}{
		{0, 131072, 64}, {2, 131072, 64}, {32, 131072, 64}, {33, 131072, 128},
		{1000, 131072, 2048}, {70000, 131072, 131072}, {131072, 131072, 131072}, {5, 16, 16},
	} {
		if got := innerMapSize(c.n, c.limit); got != c.want {
			t.Errorf("innerMapSize(%d, %d) = %d, want %d", c.n, c.limit, got, c.want)
		}
	}
}
