package kindcluster

import (
	"strings"
	"testing"
)

// kindCorefile is the Corefile kind's CoreDNS comes with.
const kindCorefile = `.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    loop
    reload
    loadbalance
}
`

func TestWithoutUpstream(t *testing.T) {
	got, ok := withoutUpstream(kindCorefile)
	// kind's Corefile less its forward block and its loop line, and no final newline
	// (as the shell's $(...) left it).
	want := strings.Replace(kindCorefile, "    forward . /etc/resolv.conf {\n       max_concurrent 1000\n    }\n", "", 1)
	want = strings.TrimSuffix(strings.Replace(want, "    loop\n", "", 1), "\n")
	if !ok || got != want {
		t.Fatalf("ok=%v, got\n%s\nwant\n%s", ok, got, want)
	}
	if again, ok := withoutUpstream(got); ok || again != got {
		t.Fatalf("a Corefile without upstream must be left as is: ok=%v\n%s", ok, again)
	}
}
