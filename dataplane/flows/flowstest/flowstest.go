// Package flowstest builds the inputs of flatnet's flow path for tests of the
// packages that consume flows (flows itself, the Hubble metrics, exporter and
// filters): a policy compiler holding one node's pods server and client with
// the CiliumNetworkPolicies a test names, a Deployment's pod as the informer
// delivers it, and a datapath that replays a list of flow events. One copy,
// so that those tests name the same pods, addresses and rules the same way.
package flowstest

import (
	"context"
	"io"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/flatnet/flatnet/dataplane/bpf"
	"github.com/flatnet/flatnet/dataplane/compile"
	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/policy"
)

// The addresses of the pods Compiler places, and one outside the cluster.
var (
	ServerIP = netip.MustParseAddr("10.224.0.40")
	ClientIP = netip.MustParseAddr("10.224.0.41")
	WorldIP  = netip.MustParseAddr("192.0.2.7")
)

// Compiler is a compiler with namespace default and its local pods server
// (app=server, ServerIP) and client (app=client, ClientIP), under the
// CiliumNetworkPolicies cnps (YAML documents), flushed.
func Compiler(t testing.TB, cnps ...string) *compile.Compiler {
	t.Helper()
	c := compile.New(identity.NewAllocator())
	must(t, "namespace default", c.UpsertNamespace(compile.Namespace{Name: "default", Labels: map[string]string{"kubernetes.io/metadata.name": "default"}}))
	must(t, "pod server", c.UpsertPod(compile.Pod{Namespace: "default", Name: "server", Labels: map[string]string{"app": "server"}, IP: ServerIP, Local: true}))
	must(t, "pod client", c.UpsertPod(compile.Pod{Namespace: "default", Name: "client", Labels: map[string]string{"app": "client"}, IP: ClientIP, Local: true}))
	for _, doc := range cnps {
		js, err := yaml.YAMLToJSON([]byte(doc))
		must(t, "policy YAML", err)
		cnp, err := policy.DecodeCilium(js)
		must(t, "decoding the policy", err)
		pols, err := policy.FromCilium(cnp)
		must(t, "converting policy "+cnp.Name, err)
		must(t, "compiling policy "+cnp.Name, c.UpsertPolicy(compile.PolicyKey(policy.Ref{Kind: policy.KindCNP, Namespace: cnp.Namespace, Name: cnp.Name}), pols))
	}
	c.Flush()
	return c
}

// DeploymentPod is a pod of Deployment web in namespace ns at ip, as the
// informer delivers it: its controller is the ReplicaSet web-5d8f7c9b6 (a
// pod names its Deployment only through the ReplicaSet's name, from which
// Hubble's workload, Deployment web, is derived).
func DeploymentPod(ns string, ip netip.Addr) *corev1.Pod {
	controller := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-5d8f7c9b6-q2x7z", GenerateName: "web-5d8f7c9b6-",
			Labels: map[string]string{"app": "web", "pod-template-hash": "5d8f7c9b6"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "web-5d8f7c9b6",
				UID: "3f0c", Controller: &controller}}},
		Status: corev1.PodStatus{PodIP: ip.String()},
	}
}

// Events is a datapath (flows.EventReader) that reports its events in order,
// then io.EOF.
type Events []bpf.FlowEvent

func (l *Events) Read(context.Context) (bpf.FlowEvent, error) {
	if len(*l) == 0 {
		return bpf.FlowEvent{}, io.EOF
	}
	ev := (*l)[0]
	*l = (*l)[1:]
	return ev, nil
}

func must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
