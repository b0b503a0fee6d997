package kindcluster

import "testing"

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
	want := `.:53 {
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
    cache 30 {
       disable success cluster.local
       disable denial cluster.local
    }
    reload
    loadbalance
}`
	if !ok || got != want {
		t.Fatalf("ok=%v, got\n%s\nwant\n%s", ok, got, want)
	}
	if again, ok := withoutUpstream(got); ok || again != got {
		t.Fatalf("a Corefile without upstream must be left as is: ok=%v\n%s", ok, again)
	}
}
