package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/topology"
)

// syntheticSubnet gives addresses to nodes and pods that have none: flatnet's
// node subnet, so ipBlock rules written for a flatnet cluster read the same.
var syntheticSubnet = netip.MustParsePrefix("10.224.0.0/16")

// workload is what a --pods file describes.
type workload struct {
	namespaces []corev1.Namespace
	pods       []corev1.Pod
	nodes      []corev1.Node
	// probe are the ports of a policy-assistant probe file's Probes.
	probe []portProtocol
}

// portProtocol is one port the table is computed for.
type portProtocol struct {
	port  int
	proto oracle.Protocol
}

// paProbeFile is policy-assistant's synthetic probe file (analyze --probe-path),
// the compact form its users already write: namespaces with their labels,
// pods with labels, an optional IP and container ports, and the probes.
type paProbeFile struct {
	Probes []struct {
		Port     intstr.IntOrString `json:"Port"`
		Protocol string             `json:"Protocol"`
	} `json:"Probes"`
	Resources struct {
		Namespaces map[string]map[string]string `json:"Namespaces"`
		Pods       []struct {
			Namespace  string            `json:"Namespace"`
			Name       string            `json:"Name"`
			Labels     map[string]string `json:"Labels"`
			IP         string            `json:"IP"`
			Containers []struct {
				Name     string `json:"Name"`
				Port     int32  `json:"Port"`
				PortName string `json:"PortName"`
				Protocol string `json:"Protocol"`
			} `json:"Containers"`
		} `json:"Pods"`
	} `json:"Resources"`
}

// loadPods reads a --pods file: Pod, Namespace and Node objects (or a v1
// List of them), or a policy-assistant probe file.
func loadPods(file string) (workload, error) {
	var w workload
	docs, err := readManifests(file)
	if err != nil {
		return w, fmt.Errorf("--pods %w", err)
	}
	if len(docs) == 0 {
		return w, fmt.Errorf("--pods %s: no document in the file", file)
	}
	for _, d := range docs {
		if err := w.addDocument(d); err != nil {
			return w, fmt.Errorf("--pods %w", err)
		}
	}
	if len(w.pods) == 0 {
		return w, fmt.Errorf("--pods %s: no pod in the file", file)
	}
	return w, nil
}

func (w *workload) addDocument(d document) error {
	tm, err := typeOf(d)
	if err != nil {
		return err
	}
	switch {
	case tm.APIVersion == "" && tm.Kind == "" && strings.Contains(string(d.data), "Resources"):
		return w.addProbeFile(d)
	case tm.APIVersion == "v1" && tm.Kind == "Pod":
		var p corev1.Pod
		if err := decodeStrict(d, &p); err != nil {
			return err
		}
		if p.Name == "" {
			return fmt.Errorf("%s: metadata.name: give the pod a name", d)
		}
		if p.Namespace == "" {
			p.Namespace = metav1.NamespaceDefault
		}
		for _, q := range w.pods {
			if q.Namespace == p.Namespace && q.Name == p.Name {
				return fmt.Errorf("%s: pod %s/%s is given twice", d, p.Namespace, p.Name)
			}
		}
		w.pods = append(w.pods, p)
	case tm.APIVersion == "v1" && tm.Kind == "Namespace":
		var ns corev1.Namespace
		if err := decodeStrict(d, &ns); err != nil {
			return err
		}
		w.namespaces = append(w.namespaces, ns)
	case tm.APIVersion == "v1" && tm.Kind == "Node":
		var n corev1.Node
		if err := decodeStrict(d, &n); err != nil {
			return err
		}
		w.nodes = append(w.nodes, n)
	default:
		return fmt.Errorf("%s: apiVersion %q kind %q: want v1 Pod, Namespace, Node or List, or a policy-assistant probe file", d, tm.APIVersion, tm.Kind)
	}
	return nil
}

func (w *workload) addProbeFile(d document) error {
	var pf paProbeFile
	if err := decodeStrict(d, &pf); err != nil {
		return fmt.Errorf("%w (read as a policy-assistant probe file)", err)
	}
	for name, labels := range pf.Resources.Namespaces {
		w.namespaces = append(w.namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}})
	}
	for i, p := range pf.Resources.Pods {
		pod := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels}}
		pod.Status.PodIP = p.IP
		for _, c := range p.Containers {
			proto := corev1.Protocol(strings.ToUpper(c.Protocol))
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c.Name,
				Ports: []corev1.ContainerPort{{Name: c.PortName, ContainerPort: c.Port, Protocol: proto}}})
		}
		if pod.Name == "" || pod.Namespace == "" {
			return fmt.Errorf("%s: Resources.Pods[%d]: give Namespace and Name", d, i)
		}
		w.pods = append(w.pods, pod)
	}
	for i, p := range pf.Probes {
		proto := oracle.Protocol(strings.ToUpper(p.Protocol))
		if p.Port.Type != intstr.Int || p.Port.IntVal < 1 || p.Port.IntVal > 65535 || (proto != oracle.TCP && proto != oracle.UDP && proto != oracle.SCTP) {
			return fmt.Errorf("%s: Probes[%d]: want a port number 1-65535 and TCP, UDP or SCTP, got %s %q", d, i, p.Port.String(), p.Protocol)
		}
		w.probe = append(w.probe, portProtocol{port: int(p.Port.IntVal), proto: proto})
	}
	return nil
}

// cluster completes the workload into the oracle's model: pods without a
// namespace object get one, pods without a node go to node-1, and nodes and
// pods without an address get the next free one of syntheticSubnet. Policy
// only sees addresses through ipBlock/CIDR rules, so for every other rule the
// table does not depend on them.
func (w workload) cluster() (oracle.Cluster, string, error) {
	used := map[netip.Addr]bool{}
	for _, p := range w.pods {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			used[a] = true
		}
	}
	for _, n := range w.nodes {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				used[ip] = true
			}
		}
	}
	next := syntheticSubnet.Addr()
	alloc := func() (string, error) {
		for next = next.Next(); used[next]; next = next.Next() {
		}
		if !syntheticSubnet.Contains(next) {
			return "", fmt.Errorf("--pods: more nodes and pods than addresses in %s", syntheticSubnet)
		}
		used[next] = true
		return next.String(), nil
	}
	namespaces := append([]corev1.Namespace(nil), w.namespaces...)
	hasNS := map[string]bool{}
	for _, ns := range namespaces {
		hasNS[ns.Name] = true
	}
	nodes := append([]corev1.Node(nil), w.nodes...)
	hasNode := map[string]bool{}
	for _, n := range nodes {
		hasNode[n.Name] = true
	}
	for i, n := range nodes {
		if !hasInternalIP(n) {
			ip, err := alloc()
			if err != nil {
				return oracle.Cluster{}, "", err
			}
			nodes[i].Status.Addresses = append(nodes[i].Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip})
		}
	}
	pods := make([]corev1.Pod, len(w.pods))
	for i, p := range w.pods {
		p = *p.DeepCopy()
		if !hasNS[p.Namespace] {
			hasNS[p.Namespace] = true
			namespaces = append(namespaces, corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: p.Namespace}})
		}
		if p.Spec.NodeName == "" {
			p.Spec.NodeName = "node-1"
		}
		if !hasNode[p.Spec.NodeName] {
			hasNode[p.Spec.NodeName] = true
			ip, err := alloc()
			if err != nil {
				return oracle.Cluster{}, "", err
			}
			nodes = append(nodes, corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: p.Spec.NodeName},
				Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}}})
		}
		if p.Status.PodIP == "" && !p.Spec.HostNetwork {
			ip, err := alloc()
			if err != nil {
				return oracle.Cluster{}, "", err
			}
			p.Status.PodIP = ip
		}
		pods[i] = p
	}
	c, err := oracle.ClusterFromObjects(namespaces, pods, nodes, nil)
	if err != nil {
		return oracle.Cluster{}, "", fmt.Errorf("--pods: %w", err)
	}
	return c, leftOut(pods, 0), nil
}

// leftOut says which pods the oracle's model leaves out (oracle.ClusterFromObjects)
// and why, so the table does not silently miss them; "" when none.
func leftOut(pods []corev1.Pod, finished int) string {
	hostNet, noIP := 0, 0
	for _, p := range pods {
		switch {
		case p.Spec.HostNetwork:
			hostNet++
		case p.Status.PodIP == "":
			noIP++
		}
	}
	var parts []string
	if hostNet > 0 {
		parts = append(parts, fmt.Sprintf("%d host-network (policy sees them as their node)", hostNet))
	}
	if noIP > 0 {
		parts = append(parts, fmt.Sprintf("%d without an IP yet", noIP))
	}
	if finished > 0 {
		parts = append(parts, fmt.Sprintf("%d finished", finished))
	}
	if len(parts) == 0 {
		return ""
	}
	return "pods left out: " + strings.Join(parts, ", ")
}

func hasInternalIP(n corev1.Node) bool {
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return true
		}
	}
	return false
}

// defaultWorkload is the upstream netpol model flatnet's suites run: namespaces
// x, y, z labelled ns=<name>, pods a, b, c labelled pod=<name>, serving 80 and
// 81 over TCP and UDP, on two nodes.
func defaultWorkload() (oracle.Cluster, error) {
	return topology.Default("", false).PlannedCluster(syntheticSubnet, 2)
}

// Cilium's policy resources, read with --cluster.
var (
	cnpResource  = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnpResource = schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
)

// readCluster reads namespaces, pods, nodes and every policy from the API
// server. Cilium policies are read strictly into the oracle's types, so a
// policy in force with a field outside the modelled subset is an error naming
// it, never a silently different table.
func readCluster(ctx context.Context, kube kubernetes.Interface, dyn dynamic.Interface) (oracle.Cluster, oracle.PolicySet, string, error) {
	var ps oracle.PolicySet
	nss, err := kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: list namespaces: %w", err)
	}
	pods, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: list pods: %w", err)
	}
	nodes, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: list nodes: %w", err)
	}
	nps, err := kube.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: list NetworkPolicies: %w", err)
	}
	ps.NetworkPolicies = nps.Items
	for _, gvr := range []schema.GroupVersionResource{cnpResource, ccnpResource} {
		list, err := dyn.Resource(gvr).List(ctx, metav1.ListOptions{})
		if apierrors.IsNotFound(err) {
			continue // Cilium's CRDs are not installed: no such policies
		}
		if err != nil {
			return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: list %s: %w", gvr.Resource, err)
		}
		for _, u := range list.Items {
			// What the API server adds (uid, managedFields, status...) is
			// not policy; keep what a manifest holds.
			obj := map[string]any{"apiVersion": u.GetAPIVersion(), "kind": u.GetKind(),
				"metadata": map[string]any{"name": u.GetName(), "namespace": u.GetNamespace(), "labels": u.GetLabels()}}
			for _, k := range []string{"spec", "specs"} {
				if v, ok := u.Object[k]; ok {
					obj[k] = v
				}
			}
			data, err := json.Marshal(obj)
			if err != nil {
				return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
			}
			var cp oracle.CiliumPolicy
			where := fmt.Sprintf("%s %s", u.GetKind(), strings.TrimPrefix(u.GetNamespace()+"/"+u.GetName(), "/"))
			if err := decodeStrictJSON(where, data, &cp); err != nil {
				return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: %w", subsetHint(err, u.GetKind()))
			}
			ps.CiliumPolicies = append(ps.CiliumPolicies, cp)
		}
	}
	// A finished pod keeps its address, which a running pod may reuse: only
	// pods that can still take connections are in the model.
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			live = append(live, p)
		}
	}
	c, err := oracle.ClusterFromObjects(nss.Items, live, nodes.Items, nil)
	if err != nil {
		return oracle.Cluster{}, ps, "", fmt.Errorf("--cluster: %w", err)
	}
	return c, ps, leftOut(live, len(pods.Items)-len(live)), nil
}
