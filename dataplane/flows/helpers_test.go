package flows

import (
	"encoding/json"
	"strings"
	"testing"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func dump(rs []*Response) string {
	var b strings.Builder
	for _, r := range rs {
		js, _ := json.Marshal(r)
		b.Write(js)
		b.WriteByte('\n')
	}
	return b.String()
}
