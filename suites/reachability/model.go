package reachability

import (
	"github.com/flatnet/flatnet/fixtures/oracle"
	"github.com/flatnet/flatnet/fixtures/topology"
)

// ModelEndpoints are the model's pods as table rows or columns, labelled
// "x/a". With viaService, each is reached through its own Service (labelled
// "svc:x/a") and judged on the pod behind it.
func ModelEndpoints(m topology.Model, viaService bool) []Endpoint {
	var out []Endpoint
	for _, r := range m.AllPods() {
		e := Endpoint{Label: r.String(), Peer: m.Peer(r)}
		if viaService {
			e.Label = "svc:" + r.String()
			e.Service = &ServiceRef{Namespace: m.Namespace(r.Namespace), Name: m.ServiceName(r)}
		}
		out = append(out, e)
	}
	return out
}

// NodeEndpoints are the cluster's nodes (probes from their host network),
// labelled "node/<name>".
func NodeEndpoints(c oracle.Cluster) []Endpoint {
	var out []Endpoint
	for _, n := range c.Nodes {
		p := oracle.NodePeer(n.Name)
		out = append(out, Endpoint{Label: p.String(), Peer: p})
	}
	return out
}

// ModelPorts are the model's ports as table port columns.
func ModelPorts(m topology.Model) []PortProtocol {
	var out []PortProtocol
	for _, p := range m.Ports {
		out = append(out, PortProtocol{Port: int(p.Number), Protocol: oracle.Protocol(p.Protocol)})
	}
	return out
}
