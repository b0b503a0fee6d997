package enforce

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
	"github.com/flatnet/flatnet/dataplane/policy"
	"github.com/flatnet/flatnet/internal/testenv"
)

// newTestNode makes a bpffs of the test's own, returning the enforcer's pin
// directory on it, and a netns standing in for the node, holding the veths.
func newTestNode(t testing.TB) (pinDir string, node ns.NetNS) {
	t.Helper()
	testenv.RequireRoot(t)
	return filepath.Join(testenv.BPFFS(t), "flatnet"), podnettest.NewNS(t)
}

// containEnv is an Enforcer on a private bpffs with veths for pods in a test netns.
type containEnv struct {
	t    *testing.T
	e    *Enforcer
	node ns.NetNS
	n    int
}

func newContainEnv(t *testing.T) *containEnv {
	ctx := context.Background()
	pin, node := newTestNode(t)
	e, err := New(ctx, Config{NodeName: "n1", PinDir: pin}, slog.New(slog.DiscardHandler))
	must(t, err)
	t.Cleanup(func() { e.Close() })
	must(t, e.UpsertNode(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.224.0.2"}}}}))
	return &containEnv{t: t, e: e, node: node}
}

// attach creates a veth for ns/name and attaches the pod as CNI ADD would.
func (c *containEnv) attach(namespace, name, ip string) error {
	c.t.Helper()
	c.n++
	host := fmt.Sprintf("fnc%d", c.n)
	ifindex := podnettest.AddVeth(c.t, c.node, host, host+"p")
	ep := endpointapi.Endpoint{ContainerID: "c-" + name, PodNamespace: namespace, PodName: name, HostIfName: host,
		HostIfIndex: ifindex, PodIfName: "eth0", IP: netip.MustParseAddr(ip)}
	return c.node.Do(func(ns.NetNS) error { return c.e.Attach(context.Background(), ep) })
}

func (c *containEnv) pod(namespace, name, ip string) {
	ctx := context.Background()
	must(c.t, c.e.UpsertNamespace(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}))
	must(c.t, c.e.UpsertPod(ctx, pod(namespace, name, ip, "n1", map[string]string{"app": name})))
}

// mapAllows reads the verdict the datapath's maps hold for ingress TCP port from remote.
func (c *containEnv) mapAllows(namespace, name, remote string, port uint16) bool {
	c.t.Helper()
	md, _, err := c.e.LookupMaps(namespace, name, policy.Ingress, netip.MustParseAddr(remote), policy.ProtoTCP, port)
	must(c.t, err)
	return md.Allowed
}

// oversized is a CNP selecting every pod of namespace ns whose compiled policy has
// more entries than an endpoint's policy map holds (50 CIDRs x 1000 ports x TCP,
// UDP and SCTP = 150,000 > 131,072).
func oversized(namespace string) *unstructured.Unstructured {
	var cidrs []any
	for i := range 50 {
		cidrs = append(cidrs, fmt.Sprintf("192.168.%d.0/24", i))
	}
	var ports []any
	for p := 1000; p < 2000; p++ {
		ports = append(ports, map[string]any{"port": fmt.Sprint(p)})
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "huge", "namespace": namespace, "uid": "u-huge", "resourceVersion": "7"},
		"spec": map[string]any{
			"endpointSelector": map[string]any{},
			"ingress": []any{map[string]any{
				"fromCIDR": cidrs,
				"toPorts":  []any{map[string]any{"ports": ports}},
			}},
		},
	}}
}

const denyClient = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-client, namespace: b-victim}
spec:
  endpointSelector: {}
  ingressDeny: [{fromCIDR: [10.224.9.9/32]}]
`

// TestOversizedPolicyContained: a policy too large for its endpoints' maps in one
// namespace must not stop the writes of other namespaces (a new deny there is
// written in the same update) nor the attachment of new pods elsewhere; the
// endpoints it selects fail closed (deny-all) and the policy is reported rejected
// for them.
func TestOversizedPolicyContained(t *testing.T) {
	c := newContainEnv(t)
	ctx := context.Background()
	c.pod("a-big", "big", "10.224.1.10")
	c.pod("b-victim", "victim", "10.224.1.11")
	c.pod("c-new", "fresh", "10.224.1.12")
	must(t, c.node.Do(func(ns.NetNS) error { return c.e.Synced(ctx) }))
	must(t, c.attach("a-big", "big", "10.224.1.10"))
	must(t, c.attach("b-victim", "victim", "10.224.1.11"))
	if !c.mapAllows("b-victim", "victim", "10.224.9.9", 80) || !c.mapAllows("a-big", "big", "192.168.3.3", 1500) {
		t.Fatalf("before any policy both endpoints must allow")
	}
	rep := &fakeReporter{}
	c.e.SetReporter(rep)

	// Both objects reach the enforcer before a write succeeds: one update.
	errBig := c.e.UpsertCiliumPolicy(ctx, oversized("a-big"))
	errDeny := c.e.UpsertCiliumPolicy(ctx, cnp(t, denyClient))
	t.Logf("upsert errors: oversized=%v deny=%v", errBig, errDeny)

	if c.mapAllows("b-victim", "victim", "10.224.9.9", 80) {
		t.Errorf("the new deny of namespace b-victim was not written: an oversized policy in a-big stopped it")
	}
	if err := c.attach("c-new", "fresh", "10.224.1.12"); err != nil {
		t.Errorf("attaching a new pod in namespace c-new: %v", err)
	}
	// Fail closed: the endpoint whose policy cannot be written allows nothing.
	if c.mapAllows("a-big", "big", "192.168.3.3", 1500) || c.mapAllows("a-big", "big", "10.224.9.9", 80) {
		t.Errorf("the endpoint whose policy could not be written is not isolated (deny-all)")
	}
	rej := c.e.RejectedPolicies()
	if len(rej) != 1 || rej[0].Object.Ref.Name != "huge" || !strings.Contains(rej[0].Message, "a-big/big") ||
		!strings.Contains(rej[0].Message, "131072") || rej[0].Reason != ReasonTooLarge {
		t.Fatalf("rejected = %+v, want the oversized policy rejected for a-big/big with the limit", rej)
	}
	// A new pod the oversized policy selects still starts, isolated, and is named.
	c.pod("a-big", "big2", "10.224.1.13")
	if err := c.attach("a-big", "big2", "10.224.1.13"); err != nil {
		t.Fatalf("attaching a new pod selected by the oversized policy: %v (want it attached, isolated)", err)
	}
	if c.mapAllows("a-big", "big2", "192.168.3.3", 1500) {
		t.Errorf("a new pod whose policy does not fit must start isolated")
	}
	// Retries (the agent's 10 s loop) rewrite but report once per object version.
	must(t, c.e.retry(ctx))
	must(t, c.e.retry(ctx))
	if r := rep.byReason(ReasonTooLarge); len(r) != 1 || len(c.e.RejectedPolicies()[0].Pods) != 2 {
		t.Errorf("reported %+v (rejections %+v), want one report of the oversized policy covering both pods", r, c.e.RejectedPolicies())
	}
	// Deleting the policy lifts the isolation.
	must(t, c.e.DeletePolicy(ctx, policy.Ref{Kind: policy.KindCNP, Namespace: "a-big", Name: "huge"}))
	if !c.mapAllows("a-big", "big", "192.168.3.3", 1500) || len(c.e.RejectedPolicies()) != 0 {
		t.Errorf("after deleting the oversized policy: allowed=%v rejected=%+v", c.mapAllows("a-big", "big", "192.168.3.3", 1500), c.e.RejectedPolicies())
	}
}

// TestMappedCIDRContained: the IPv4-mapped CIDR of issue 13 item 1 in one namespace
// is rejected with its field and leaves the others' writes and new pods alone.
func TestMappedCIDRContained(t *testing.T) {
	c := newContainEnv(t)
	ctx := context.Background()
	c.pod("b-victim", "victim", "10.224.1.11")
	c.pod("c-new", "fresh", "10.224.1.12")
	must(t, c.node.Do(func(ns.NetNS) error { return c.e.Synced(ctx) }))
	must(t, c.attach("b-victim", "victim", "10.224.1.11"))
	rep := &fakeReporter{}
	c.e.SetReporter(rep)
	errBad := c.e.UpsertCiliumPolicy(ctx, cnp(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mapped, namespace: a-big}
spec:
  endpointSelector: {}
  egress: [{toCIDR: ["::ffff:10.0.0.0/104"]}]
`))
	if errBad == nil || !strings.Contains(errBad.Error(), "spec.egress[0].toCIDR[0]") {
		t.Errorf("mapped CIDR: %v, want a rejection naming spec.egress[0].toCIDR[0]", errBad)
	}
	if r := rep.byReason(ReasonInvalid); len(r) != 1 || r[0].Object.Ref.Name != "mapped" || !strings.Contains(r[0].Message, "10.0.0.0/8") {
		t.Errorf("reported %+v, want one PolicyRejected report naming the IPv4 block to write", rep.got)
	}
	_ = c.e.UpsertCiliumPolicy(ctx, cnp(t, denyClient))
	if c.mapAllows("b-victim", "victim", "10.224.9.9", 80) {
		t.Errorf("the new deny of namespace b-victim was not written")
	}
	if err := c.attach("c-new", "fresh", "10.224.1.12"); err != nil {
		t.Errorf("attaching a new pod in namespace c-new: %v", err)
	}
}

type fakeReporter struct{ got []Rejection }

func (f *fakeReporter) Rejected(r Rejection) { f.got = append(f.got, r) }

func (f *fakeReporter) byReason(reason string) []Rejection {
	var out []Rejection
	for _, r := range f.got {
		if r.Reason == reason {
			out = append(out, r)
		}
	}
	return out
}

// The Event names the object (kind, namespace, name, UID) and carries the reason.
func TestEventReporterPostsOnTheObject(t *testing.T) {
	kube := fake.NewSimpleClientset()
	r, stop := NewEventReporter(kube, "n1")
	r.Rejected(Rejection{Object: ObjectRef{Ref: policy.Ref{Kind: policy.KindCNP, Namespace: "team-a", Name: "mapped"},
		APIVersion: "cilium.io/v2", UID: "u1", ResourceVersion: "5"}, Node: "n1", Reason: ReasonInvalid, Message: "spec.egress[0].toCIDR[0]: ..."})
	var evs *corev1.EventList
	for range 100 {
		var err error
		evs, err = kube.CoreV1().Events("team-a").List(context.Background(), metav1.ListOptions{})
		must(t, err)
		if len(evs.Items) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if len(evs.Items) != 1 {
		t.Fatalf("events in team-a: %d, want 1", len(evs.Items))
	}
	ev := evs.Items[0]
	if ev.InvolvedObject.Kind != "CiliumNetworkPolicy" || ev.InvolvedObject.Name != "mapped" || ev.InvolvedObject.UID != "u1" ||
		ev.Reason != ReasonInvalid || ev.Type != corev1.EventTypeWarning || ev.Source.Host != "n1" || !strings.Contains(ev.Message, "toCIDR[0]") {
		t.Errorf("event %+v", ev)
	}
}

func TestEventMessageTruncated(t *testing.T) {
	long := strings.Repeat("é", 2000)
	got := truncate(long, maxEventMessage)
	if len(got) > maxEventMessage || !strings.HasSuffix(got, "flatnetctl rejected shows all)") || !utf8.ValidString(got) {
		t.Errorf("truncate: %d bytes, valid UTF-8 %v, suffix %q", len(got), utf8.ValidString(got), got[len(got)-20:])
	}
	if truncate("short", maxEventMessage) != "short" {
		t.Errorf("a short message must stay as it is")
	}
}
