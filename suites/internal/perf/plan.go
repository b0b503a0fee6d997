// Package perf runs `probe perf` (probes/perf: netperf's TCP_RR, TCP_CRR,
// TCP_STREAM, UDP_RR) on any cluster between pods and hosts of two nodes, with
// and without many NetworkPolicies selecting the servers, and reports every figure
// beside host ↔ host measured in the same run: an aligned table, perfdash JSON
// and a PNG plot.
//
// The client runs `probe perf` by exec through the API server (probes/podexec)
// in pods that live for the whole run: a cell costs one exec, not a pod start,
// the pods are placed once and every cell uses the same two nodes, and the JSON
// result comes back on stdout. Only the command's start crosses the API server;
// the measurement is taken inside the pod.
package perf

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/suites/internal/workload"
)

// Path is a client → server placement.
type Path string

const (
	SameNode  Path = "pod→pod same node"
	CrossNode Path = "pod→pod 2 nodes"
	PodToHost Path = "pod→host"
	HostToPod Path = "host→pod"
	// HostToHost is the baseline: two host-network pods on two nodes, no CNI
	// datapath in the way.
	HostToHost Path = "host→host"
)

// Paths lists every path in table order, the baseline last.
var Paths = []Path{SameNode, CrossNode, PodToHost, HostToPod, HostToHost}

// Slug is the path's name in labels, files and flags ("pod-pod-same-node").
func (p Path) Slug() string {
	r := strings.NewReplacer("→", "-", " ", "-")
	return strings.ToLower(r.Replace(string(p)))
}

// ParsePath accepts a path's slug.
func ParsePath(s string) (Path, error) {
	var slugs []string
	for _, p := range Paths {
		if p.Slug() == s {
			return p, nil
		}
		slugs = append(slugs, p.Slug())
	}
	return "", fmt.Errorf("unknown path %q: use %s", s, strings.Join(slugs, ", "))
}

// crossesNodes says whether the path needs two nodes.
func (p Path) crossesNodes() bool { return p != SameNode }

// Pod names and roles. Servers carry RoleLabel=server, so every generated
// policy selects them; the outsider is the pod no policy allows, used to see
// that the policies are in force.
const (
	RoleLabel = "perf.flatnet.io/role"
	// RunLabel marks a run's namespace: one run at a time per cluster.
	RunLabel      = "perf.flatnet.io/run"
	clientPod     = "client-a"
	hostClientPod = "hostclient-a"
	outsiderPod   = "outsider-a"
	serverAPod    = "server-a"
	serverBPod    = "server-b"
	hostServerPod = "hostserver-b"
)

// endpoints are the client and server pods of each path.
var endpoints = map[Path]struct{ client, server string }{
	SameNode:   {clientPod, serverAPod},
	CrossNode:  {clientPod, serverBPod},
	PodToHost:  {clientPod, hostServerPod},
	HostToPod:  {hostClientPod, serverBPod},
	HostToHost: {hostClientPod, hostServerPod},
}

// Nodes picks the two nodes of the run: the first two nodes pods may be
// scheduled on (no NoSchedule/NoExecute taint, Ready), by name. With one, the
// paths that cross nodes cannot run; with none, nothing can.
func Nodes(nodes []corev1.Node) (a, b string, err error) {
	var ok []string
	for _, n := range nodes {
		if workload.Schedulable(n) {
			ok = append(ok, n.Name)
		}
	}
	slices.Sort(ok)
	switch len(ok) {
	case 0:
		return "", "", fmt.Errorf("no Ready node without a NoSchedule or NoExecute taint among %d nodes", len(nodes))
	case 1:
		return ok[0], "", nil
	}
	return ok[0], ok[1], nil
}

// podSpecs are the run's pods: on node a the pod client, the host client and
// the outsider and a pod server; on node b a pod server and a host server. With
// no node b, only a's pods.
func podSpecs(namespace, image string, port int, a, b string) []corev1.Pod {
	serve := []string{"/probe", "perf", "serve", fmt.Sprintf("--port=%d", port)}
	pause := []string{"/probe", "pause"}
	mk := func(name, node, role string, host bool, cmd []string) corev1.Pod {
		grace := int64(1)
		return workload.Prepare(corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{RoleLabel: role}},
			Spec: corev1.PodSpec{
				NodeName:                      node,
				HostNetwork:                   host,
				TerminationGracePeriodSeconds: &grace,
				Containers:                    []corev1.Container{{Name: "probe", Image: image, Command: cmd}},
			},
		})
	}
	pods := []corev1.Pod{
		mk(clientPod, a, "client", false, pause),
		mk(hostClientPod, a, "client", true, pause),
		mk(outsiderPod, a, "outsider", false, pause),
		mk(serverAPod, a, "server", false, serve),
	}
	if b != "" {
		pods = append(pods, mk(serverBPod, b, "server", false, serve), mk(hostServerPod, b, "host-server", true, serve))
	}
	return pods
}
