package main

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/flatnet/flatnet/fixtures/oracle"
)

// analyzeOptions are analyze's flags.
type analyzeOptions struct {
	policyPaths []string
	podsFile    string
	cluster     bool
	namespaces  []string
	ports       []string
	protocol    string
	explain     bool
	from, to    string
	output      string
}

func analyzeCommand() *cobra.Command {
	var o analyzeOptions
	cmd := &cobra.Command{
		Use:   "analyze",
		Short: "what policies will do, from the policies alone: a truth table, or the chain for one connection (no datapath involved)",
		Long: `analyze asks flatnet's policy oracle (fixtures/oracle, written from the Kubernetes
and Cilium specifications, independent of flatnet's datapath) what a set of policies
does, before they are applied.

Policies (-f): files or directories of YAML or JSON manifests, multi-document or v1
Lists: networking.k8s.io/v1 NetworkPolicy, and cilium.io/v2 CiliumNetworkPolicy and
CiliumClusterwideNetworkPolicy in the subset dataplane/POLICY.md lists. Fields are read
strictly: a document that does not parse, an unknown field, a Cilium field outside the
subset or another kind is an error naming the file, the document and the field. A
namespaced policy without metadata.namespace goes to "default", as with kubectl apply -f.

Pods and namespaces, one of:
  --pods FILE   v1 Pod, Namespace and Node objects (or a v1 List), or policy-assistant's
                probe file ({"Resources": {"Namespaces": ..., "Pods": ...}, "Probes": ...}).
                Pods without a namespace go to "default", without a node to node-1,
                without an IP get the next free address of 10.224.0.0/16.
  --cluster     namespaces, pods, nodes and every policy of the cluster the kubeconfig
                names (read only); -f policies are added, replacing the cluster's policy of
                the same kind, namespace and name.
  neither       the upstream netpol model the suites use: namespaces x, y, z (label
                ns=<name>), pods a, b, c (label pod=<name>) serving 80 and 81 on TCP and UDP.

Ports: --port (repeatable, 80 or 80/UDP; --protocol for those without one). Default: the
probe file's Probes, else every numeric port the policies name, else 80.

Without --explain: the truth table, one grid per port, rows from and columns to
('.' reachable, 'X' blocked), then each blocked connection and why.
With --explain --from A --to B[:PORT[/PROTOCOL]]: the chain at each end, in order:
egress of the source, then ingress of the destination, each through the tiers
ClusterNetworkPolicy (not modelled yet: none), Cilium deny, NetworkPolicy, Cilium allow,
naming every policy that selects the pod and every rule that matches, and the verdict.
A and B are <namespace>/<pod>, or an IP address (a pod's, a node's, or outside).`,
		Example: `  # the seed article's policy on its two pods
  flatnetctl analyze -f default-deny.yaml --pods seed-pods.yaml
  flatnetctl analyze -f default-deny.yaml --pods seed-pods.yaml --explain --from default/client --to default/server:80
  # a directory of policies on the x, y, z × a, b, c model, ports 80 and 53/UDP, as JSON
  flatnetctl analyze -f policies/ --port 80 --port 53/UDP -o json
  # what the cluster's policies, plus one not applied yet, do in namespace demo
  flatnetctl analyze --cluster -n demo -f new-policy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAnalyze(cmd, o) },
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.policyPaths, "policy-path", "f", nil, "policy file or directory (repeatable)")
	f.StringVar(&o.podsFile, "pods", "", "file of Pod, Namespace and Node objects, or a policy-assistant probe file")
	f.BoolVar(&o.cluster, "cluster", false, "read namespaces, pods, nodes and policies from the cluster (read only)")
	f.StringSliceVarP(&o.namespaces, "namespace", "n", nil, "show only pods of these namespaces in the table (all pods still count for policy)")
	f.StringSliceVar(&o.ports, "port", nil, "port to analyze, 80 or 80/UDP (repeatable)")
	f.StringVar(&o.protocol, "protocol", "TCP", "protocol of ports given without one: TCP, UDP or SCTP")
	f.BoolVar(&o.explain, "explain", false, "walk the chain for one connection (--from, --to)")
	f.StringVar(&o.from, "from", "", "with --explain: the source, <namespace>/<pod> or an IP address")
	f.StringVar(&o.to, "to", "", "with --explain: the destination, <namespace>/<pod>[:<port>[/<protocol>]] or <ip>[:<port>[/<protocol>]]")
	f.StringVarP(&o.output, "output", "o", "table", "table or json")
	return cmd
}

// checkFlags refuses contradictory or malformed flags before any file is read.
func (o analyzeOptions) checkFlags() (oracle.Protocol, []portProtocol, error) {
	if o.output != "table" && o.output != "json" {
		return "", nil, fmt.Errorf("-o %q: use table or json", o.output)
	}
	if o.podsFile != "" && o.cluster {
		return "", nil, fmt.Errorf("--pods and --cluster: give one (--cluster reads the pods from the cluster)")
	}
	if o.explain && (o.from == "" || o.to == "") {
		return "", nil, fmt.Errorf("--explain needs --from <namespace>/<pod> and --to <namespace>/<pod>[:<port>]")
	}
	if !o.explain && (o.from != "" || o.to != "") {
		return "", nil, fmt.Errorf("--from and --to go with --explain")
	}
	proto, err := parseProtocol(o.protocol)
	if err != nil {
		return "", nil, fmt.Errorf("--protocol: %w", err)
	}
	var ports []portProtocol
	for _, s := range o.ports {
		p, err := parsePortProtocol(s, proto)
		if err != nil {
			return "", nil, fmt.Errorf("--port %q: %w", s, err)
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return proto, ports, nil
}

func parseProtocol(s string) (oracle.Protocol, error) {
	switch p := oracle.Protocol(strings.ToUpper(s)); p {
	case oracle.TCP, oracle.UDP, oracle.SCTP:
		return p, nil
	}
	return "", fmt.Errorf("%q: use TCP, UDP or SCTP", s)
}

// parsePortProtocol reads 80 or 80/UDP; def is the protocol of a bare port.
func parsePortProtocol(s string, def oracle.Protocol) (portProtocol, error) {
	num, protoStr, hasProto := strings.Cut(s, "/")
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return portProtocol{}, fmt.Errorf("port %q is not a number 1-65535", num)
	}
	p := portProtocol{port: n, proto: def}
	if hasProto {
		if p.proto, err = parseProtocol(protoStr); err != nil {
			return portProtocol{}, err
		}
	}
	return p, nil
}

func (p portProtocol) String() string { return strconv.Itoa(p.port) + "/" + string(p.proto) }

// runAnalyze checks the flags, reads every input (files first, so bad input
// fails before any cluster work), builds the oracle and prints.
func runAnalyze(cmd *cobra.Command, o analyzeOptions) error {
	proto, ports, err := o.checkFlags()
	if err != nil {
		return err
	}
	files, err := loadPolicyPaths(o.policyPaths)
	if err != nil {
		return err
	}
	var (
		cluster oracle.Cluster
		ps      = files.set
		source  string
		note    string // pods the model leaves out
	)
	switch {
	case o.podsFile != "":
		w, err := loadPods(o.podsFile)
		if err != nil {
			return err
		}
		if cluster, note, err = w.cluster(); err != nil {
			return err
		}
		if len(ports) == 0 && !cmd.Flags().Changed("protocol") {
			ports = w.probe
		}
		source = o.podsFile
	case o.cluster:
		kube, dyn, name, err := clusterClients(cmd)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
		defer cancel()
		var live oracle.PolicySet
		if cluster, live, note, err = readCluster(ctx, kube, dyn); err != nil {
			return err
		}
		ps = files.override(live)
		source = "cluster " + name
	default:
		if cluster, err = defaultWorkload(); err != nil {
			return err
		}
		source = "the x, y, z × a, b, c model"
	}
	orc, err := oracle.New(cluster, ps)
	if err != nil {
		return fmt.Errorf("policies on %s: %w", source, err)
	}
	if len(ports) == 0 {
		ports = mentionedPorts(ps, proto, cmd.Flags().Changed("protocol"))
	}
	if note != "" {
		source += "; " + note
	}
	a := analysis{oracle: orc, cluster: cluster, policies: ps, fromFiles: len(files.origin), source: source, ports: ports}
	if o.explain {
		return a.explain(cmd.OutOrStdout(), o, proto)
	}
	return a.table(cmd.OutOrStdout(), o)
}

// mentionedPorts are the numeric ports the policies name (the first of a
// range), with their protocol (TCP for Cilium's ANY); only those of proto
// when onlyProto. None: 80/proto.
func mentionedPorts(ps oracle.PolicySet, proto oracle.Protocol, onlyProto bool) []portProtocol {
	var out []portProtocol
	add := func(port int, p oracle.Protocol) {
		pp := portProtocol{port: port, proto: p}
		if port > 0 && (!onlyProto || p == proto) && !slices.Contains(out, pp) {
			out = append(out, pp)
		}
	}
	for _, np := range ps.NetworkPolicies {
		var rules [][]networkingv1.NetworkPolicyPort
		for _, r := range np.Spec.Ingress {
			rules = append(rules, r.Ports)
		}
		for _, r := range np.Spec.Egress {
			rules = append(rules, r.Ports)
		}
		for _, ports := range rules {
			for _, p := range ports {
				pr := oracle.TCP // defaulted by the API server
				if p.Protocol != nil {
					pr = oracle.Protocol(*p.Protocol)
				}
				if p.Port != nil && p.Port.StrVal == "" {
					add(int(p.Port.IntVal), pr)
				}
			}
		}
	}
	for _, cp := range ps.CiliumPolicies {
		rules := slices.Clone(cp.Specs)
		if cp.Spec != nil {
			rules = append(rules, *cp.Spec)
		}
		for _, r := range rules {
			var toPorts [][]oracle.CiliumPortRule
			for _, x := range slices.Concat(r.Ingress, r.IngressDeny) {
				toPorts = append(toPorts, x.ToPorts)
			}
			for _, x := range slices.Concat(r.Egress, r.EgressDeny) {
				toPorts = append(toPorts, x.ToPorts)
			}
			for _, list := range toPorts {
				for _, pr := range list {
					for _, p := range pr.Ports {
						n, err := strconv.Atoi(p.Port)
						if err != nil {
							continue // a named port
						}
						switch x := oracle.Protocol(strings.ToUpper(p.Protocol)); x {
						case oracle.TCP, oracle.UDP, oracle.SCTP:
							add(n, x)
						default: // ANY or omitted
							add(n, oracle.TCP)
						}
					}
				}
			}
		}
	}
	if len(out) == 0 {
		return []portProtocol{{port: 80, proto: proto}}
	}
	slices.SortFunc(out, func(a, b portProtocol) int {
		return cmp.Or(cmp.Compare(a.port, b.port), strings.Compare(string(a.proto), string(b.proto)))
	})
	return out
}

// peerArg reads a --from/--to argument: <namespace>/<pod> or an IP address,
// either with :<port>[/<protocol>]. An address is the pod or node that has it,
// or an outside (world) address.
func peerArg(c oracle.Cluster, arg, what string, def oracle.Protocol) (oracle.Peer, *portProtocol, error) {
	host, portStr, hasPort := arg, "", false
	if i := strings.LastIndex(arg, ":"); i >= 0 {
		host, portStr, hasPort = arg[:i], arg[i+1:], true
	}
	var pp *portProtocol
	if hasPort {
		p, err := parsePortProtocol(portStr, def)
		if err != nil {
			return oracle.Peer{}, nil, fmt.Errorf("%s %q: %w", what, arg, err)
		}
		pp = &p
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		for _, p := range c.Pods {
			if p.IP == ip {
				return oracle.PodPeer(p.Namespace, p.Name), pp, nil
			}
		}
		for _, n := range c.Nodes {
			if n.IP == ip {
				return oracle.NodePeer(n.Name), pp, nil
			}
		}
		return oracle.WorldPeer(ip), pp, nil
	}
	ns, name, ok := strings.Cut(host, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return oracle.Peer{}, nil, fmt.Errorf("%s %q: want <namespace>/<pod>[:<port>[/<protocol>]] or an IP address", what, arg)
	}
	return oracle.PodPeer(ns, name), pp, nil
}
