package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/flatnet/flatnet/dataplane/flows"
)

type agentFlags struct {
	namespace, selector string
	port                int
}

func (f *agentFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.namespace, "agent-namespace", "flatnet-system", "namespace of the flatnet agent DaemonSet")
	cmd.Flags().StringVar(&f.selector, "agent-selector", "app.kubernetes.io/name=flatnet-agent", "label selector of the agent pods")
	cmd.Flags().IntVar(&f.port, "agent-port", 9970, "the agents' API port on the host's loopback (their --api-addr), reached through pods/portforward")
}

func (f *agentFlags) agents(cmd *cobra.Command) (agents, error) {
	rc, _, err := restConfig(cmd)
	if err != nil {
		return agents{}, err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return agents{}, fmt.Errorf("kubernetes client: %w", err)
	}
	if f.port < 1 || f.port > 65535 {
		return agents{}, fmt.Errorf("--agent-port %d: want a port 1-65535", f.port)
	}
	return agents{kube: kube, rest: rc, namespace: f.namespace, selector: f.selector, port: f.port}, nil
}

func flowsCommand() *cobra.Command {
	var (
		af                                          agentFlags
		pod, verdict, port, protocol, since, output string
		labels                                      []string
		last                                        int
		follow                                      bool
	)
	cmd := &cobra.Command{
		Use:   "flows",
		Short: "recent and live flows of every node, as hubble observe shows them",
		Long: `flows asks the flatnet agent of every node (through the API server's
pods/portforward subresource: you need RBAC create on pods/portforward in the
agents' namespace) for the flows its datapath reported: new connections allowed and
packets dropped, named with pods, labels and the policies that decided.

-o json prints one JSON object per line in the shape of "hubble observe -o json".
Namespace, pod, label and port filters match either side of a flow. An agent that
cannot be reached is reported on stderr; the other nodes' flows are still shown.`,
		Example: `  flatnetctl flows -n default --verdict DROPPED
  flatnetctl flows --pod default/server --port 80 -o json
  flatnetctl flows --label app=server --since 5m --follow
  kubectl flatnet flows --last 20     (installed as kubectl-flatnet)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns, _ := cmd.Flags().GetString("namespace")
			if output != "compact" && output != "json" && output != "table" {
				return fmt.Errorf("-o %q: use compact, table or json", output)
			}
			if last < 0 {
				return fmt.Errorf("--last %d: want a number of flows >= 0", last)
			}
			if pod != "" && !strings.Contains(pod, "/") && ns != "" {
				pod = ns + "/" + pod
			}
			f, err := flows.ParseFilter(ns, pod, labels, verdict, port, protocol, since, time.Now())
			if err != nil {
				return fmt.Errorf("--%w", err)
			}
			ag, err := af.agents(cmd)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			listCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			pods, err := ag.list(listCtx)
			cancel()
			if err != nil {
				return err
			}
			q := f.Values()
			if last > 0 {
				q.Set(flows.ParamLast, strconv.Itoa(last))
			}
			if follow {
				q.Set(flows.ParamFollow, "true")
			}
			p := newPrinter(cmd.OutOrStdout(), output, follow)
			failed := gather(ctx, ag, pods, q, follow, last, p, cmd.ErrOrStderr())
			if err := p.flush(); err != nil {
				return err
			}
			if failed == len(pods) {
				return fmt.Errorf("no agent answered (%d agents)", len(pods))
			}
			return nil
		},
	}
	af.add(cmd)
	fl := cmd.Flags()
	fl.StringP("namespace", "n", "", "only flows from or to pods of this namespace (default: all namespaces)")
	fl.StringVar(&pod, "pod", "", "only flows from or to this pod ([namespace/]name)")
	fl.StringArrayVarP(&labels, "label", "l", nil, "only flows from or to pods with this label (key=value; repeat: all must match)")
	fl.StringVar(&verdict, "verdict", "", "FORWARDED or DROPPED")
	fl.StringVar(&port, "port", "", "only flows with this source or destination port")
	fl.StringVar(&protocol, "protocol", "", "TCP, UDP, SCTP or ICMP")
	fl.StringVar(&since, "since", "", "only flows since this RFC 3339 time or this long ago (5m)")
	fl.IntVar(&last, "last", 0, "only the last N flows (of all nodes together; 0 = every flow kept)")
	fl.BoolVarP(&follow, "follow", "f", false, "keep printing new flows")
	fl.StringVarP(&output, "output", "o", "compact", "compact (one line per flow), table or json (hubble observe -o json lines)")
	return cmd
}

// gather reads every agent concurrently. Without --follow it merges all flows in time
// order and keeps the last N of them; with --follow it prints each agent's lines as
// they come. It returns how many agents failed (each reported on errw).
func gather(ctx context.Context, ag agents, pods []corev1.Pod, q map[string][]string, follow bool, last int, p *printer, errw io.Writer) int {
	var (
		mu     sync.Mutex
		all    []*flows.Response
		failed int
		wg     sync.WaitGroup
	)
	for _, pod := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := readAgent(ctx, ag, pod, q, func(r *flows.Response) {
				mu.Lock()
				defer mu.Unlock()
				if follow {
					p.print(r)
				} else {
					all = append(all, r)
				}
			})
			if err != nil {
				mu.Lock()
				failed++
				fmt.Fprintf(errw, "flatnetctl: flows of node %s missing: %v\n", pod.Spec.NodeName, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.SliceStable(all, func(i, j int) bool { return all[i].Time.Before(all[j].Time) })
	if last > 0 && len(all) > last {
		all = all[len(all)-last:]
	}
	for _, r := range all {
		p.print(r)
	}
	return failed
}

func readAgent(ctx context.Context, ag agents, pod corev1.Pod, q map[string][]string, each func(*flows.Response)) error {
	if !follow(q) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	body, err := ag.get(ctx, pod, flows.FlowsPath, q)
	if err != nil {
		return err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r flows.Response
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("agent %s: decoding a flow: %w", pod.Name, err)
		}
		each(&r)
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("agent %s: reading flows: %w", pod.Name, err)
	}
	return nil
}

func follow(q map[string][]string) bool {
	v := q[flows.ParamFollow]
	return len(v) > 0 && v[0] == "true"
}

type printer struct {
	w      io.Writer
	output string
	live   bool
	tw     *tabwriter.Writer
	enc    *json.Encoder
}

func newPrinter(w io.Writer, output string, live bool) *printer {
	p := &printer{w: w, output: output, live: live}
	switch output {
	case "json":
		p.enc = json.NewEncoder(w)
	case "table":
		p.tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(p.tw, "TIME\tNODE\tSOURCE\tDESTINATION\tDIRECTION\tVERDICT\tSUMMARY\tPOLICY")
	}
	return p
}

func (p *printer) print(r *flows.Response) {
	f := r.Flow
	if f == nil {
		return
	}
	switch p.output {
	case "json":
		_ = p.enc.Encode(r)
	case "table":
		fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", f.Time.Local().Format(time.StampMilli), f.NodeName,
			side(f.Source, f.IP, true, f.L4), side(f.Destination, f.IP, false, f.L4), f.TrafficDirection,
			verdictText(f), f.Summary, policies(f))
		if p.live {
			p.tw.Flush() // a live line must not wait for the end to line up
		}
	default:
		fmt.Fprintf(p.w, "%s [%s]: %s -> %s %s %s (%s)%s\n", f.Time.Local().Format(time.StampMilli), f.NodeName,
			side(f.Source, f.IP, true, f.L4), side(f.Destination, f.IP, false, f.L4),
			strings.ToLower(f.TrafficDirection), verdictText(f), f.Summary, byPolicies(f))
	}
}

func (p *printer) flush() error {
	if p.tw != nil {
		return p.tw.Flush()
	}
	return nil
}

func verdictText(f *flows.Flow) string {
	if f.Verdict == flows.VerdictDropped {
		return "DROPPED " + f.DropReasonDesc
	}
	return f.Verdict
}

// side prints namespace/pod:port (ID:n), or the IP when no pod owns the address.
func side(ep *flows.Endpoint, ip *flows.IP, source bool, l4 *flows.Layer4) string {
	addr := ""
	if ip != nil {
		addr = ip.Destination
		if source {
			addr = ip.Source
		}
	}
	if ep != nil && ep.PodName != "" {
		addr = ep.Namespace + "/" + ep.PodName
	}
	if port := portOf(l4, source); port != 0 {
		addr += ":" + strconv.Itoa(int(port))
	}
	if ep != nil {
		id := strconv.Itoa(int(ep.Identity))
		if len(ep.Labels) == 1 && strings.HasPrefix(ep.Labels[0], "reserved:") {
			id = ep.Labels[0]
		}
		addr += " (ID:" + id + ")"
	}
	return addr
}

func portOf(l4 *flows.Layer4, source bool) uint16 {
	var s, d uint16
	switch {
	case l4 == nil:
	case l4.TCP != nil:
		s, d = l4.TCP.SourcePort, l4.TCP.DestinationPort
	case l4.UDP != nil:
		s, d = l4.UDP.SourcePort, l4.UDP.DestinationPort
	case l4.SCTP != nil:
		s, d = l4.SCTP.SourcePort, l4.SCTP.DestinationPort
	}
	if source {
		return s
	}
	return d
}

func policies(f *flows.Flow) string {
	var names []string
	for _, l := range [][]*flows.Policy{f.IngressDeniedBy, f.EgressDeniedBy, f.IngressAllowedBy, f.EgressAllowedBy} {
		for _, p := range l {
			n := p.Kind + " " + p.Name
			if p.Namespace != "" {
				n = p.Kind + " " + p.Namespace + "/" + p.Name
			}
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ", ")
}

func byPolicies(f *flows.Flow) string {
	p := policies(f)
	if p == "-" {
		return ""
	}
	return " by " + p
}
