package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flatnet/flatnet/dataplane/agent"
	"github.com/flatnet/flatnet/dataplane/flows"
)

// target is the parsed <ns>/<pod>[:<port>[/<proto>]] argument.
type target struct {
	namespace, pod string
	port           uint16
	proto          string
}

// parseTarget reads [ns/]pod[:port[/proto]]; wantPort says whether the port is required.
func parseTarget(arg, defaultNS, what string, wantPort bool) (target, error) {
	t := target{namespace: defaultNS, proto: "TCP"}
	rest := arg
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		portProto := rest[i+1:]
		rest = rest[:i]
		portStr, proto, hasProto := strings.Cut(portProto, "/")
		n, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || n == 0 {
			return t, fmt.Errorf("%s %q: port %q is not a number 1-65535", what, arg, portStr)
		}
		t.port = uint16(n)
		if hasProto {
			p, err := agent.ParseProtocol(proto)
			if err != nil {
				return t, fmt.Errorf("%s %q: %w", what, arg, err)
			}
			t.proto = p.String()
		}
	} else if wantPort {
		return t, fmt.Errorf("%s %q: missing the port; write <namespace>/<pod>:<port>[/<protocol>], e.g. default/server:80/TCP", what, arg)
	}
	if ns, name, ok := strings.Cut(rest, "/"); ok {
		t.namespace, t.pod = ns, name
	} else {
		t.pod = rest
	}
	if t.namespace == "" || t.pod == "" {
		return t, fmt.Errorf("%s %q: want <namespace>/<pod>", what, arg)
	}
	return t, nil
}

// explainResult is -o json of explain.
type explainResult struct {
	Verdict string             `json:"verdict"`
	Egress  *agent.Explanation `json:"egress,omitempty"`
	Ingress *agent.Explanation `json:"ingress,omitempty"`
	Errors  []string           `json:"errors,omitempty"`
}

func explainCommand() *cobra.Command {
	var (
		af     agentFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "explain <namespace>/<source-pod> <namespace>/<destination-pod>:<port>[/<protocol>]",
		Short: "what the compiled policy decides for a new connection between two pods, and which rule decides",
		Long: `explain asks the flatnet agent on the source pod's node (egress) and the one on the
destination pod's node (ingress), through the API server's pods/portforward subresource,
what their compiled policy decides for a new connection, and which policy and rule
decide. The connection passes only if both directions forward it.`,
		Example: `  flatnetctl explain default/client default/server:80
  flatnetctl explain -n default client server:53/UDP -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("-o %q: use text or json", output)
			}
			defNS, _ := cmd.Flags().GetString("namespace")
			src, err := parseTarget(args[0], defNS, "source", false)
			if err != nil {
				return err
			}
			if src.port != 0 {
				return fmt.Errorf("source %q: give the port on the destination only", args[0])
			}
			dst, err := parseTarget(args[1], defNS, "destination", true)
			if err != nil {
				return err
			}
			ag, err := af.agents(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
			defer cancel()
			srcPod, err := getPod(ctx, ag, src, "source")
			if err != nil {
				return err
			}
			dstPod, err := getPod(ctx, ag, dst, "destination")
			if err != nil {
				return err
			}
			res := explainResult{Verdict: flows.VerdictForwarded}
			ask := func(local *corev1.Pod, dir string, remote string) *agent.Explanation {
				if local.Spec.HostNetwork {
					res.Errors = append(res.Errors, fmt.Sprintf("%s %s/%s uses the host network: flatnet enforces no policy on it", strings.ToLower(dir), local.Namespace, local.Name))
					return nil
				}
				e, err := explainOn(ctx, ag, local, dir, remote, dst)
				if err != nil {
					res.Errors = append(res.Errors, err.Error())
					return nil
				}
				if e.Verdict == flows.VerdictDropped {
					res.Verdict = flows.VerdictDropped
				}
				return e
			}
			res.Egress = ask(srcPod, flows.Egress, dstPod.Status.PodIP)
			res.Ingress = ask(dstPod, flows.Ingress, srcPod.Status.PodIP)
			if len(res.Errors) > 0 && res.Verdict != flows.VerdictDropped {
				res.Verdict = "UNKNOWN"
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return err
				}
			} else {
				printExplain(cmd.OutOrStdout(), src, dst, srcPod, dstPod, res)
			}
			if len(res.Errors) > 0 {
				return fmt.Errorf("%s", strings.Join(res.Errors, "; "))
			}
			return nil
		},
	}
	af.add(cmd)
	cmd.Flags().StringP("namespace", "n", "default", "namespace of pods given without one")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// getPod fetches a pod; a missing pod or namespace is named as such.
func getPod(ctx context.Context, ag agents, t target, what string) (*corev1.Pod, error) {
	p, err := ag.kube.CoreV1().Pods(t.namespace).Get(ctx, t.pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, nsErr := ag.kube.CoreV1().Namespaces().Get(ctx, t.namespace, metav1.GetOptions{}); apierrors.IsNotFound(nsErr) {
			return nil, fmt.Errorf("%s: namespace %q not found", what, t.namespace)
		}
		return nil, fmt.Errorf("%s: pod %q not found in namespace %q", what, t.pod, t.namespace)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: getting pod %s/%s: %w", what, t.namespace, t.pod, err)
	}
	if p.Spec.NodeName == "" || p.Status.PodIP == "" {
		return nil, fmt.Errorf("%s: pod %s/%s has no node or IP yet (phase %s)", what, t.namespace, t.pod, p.Status.Phase)
	}
	return p, nil
}

func explainOn(ctx context.Context, ag agents, local *corev1.Pod, dir, remote string, dst target) (*agent.Explanation, error) {
	agentPod, err := ag.onNode(ctx, local.Spec.NodeName)
	if err != nil {
		return nil, fmt.Errorf("%s of %s/%s: %w", strings.ToLower(dir), local.Namespace, local.Name, err)
	}
	q := url.Values{}
	q.Set(flows.ParamNamespace, local.Namespace)
	q.Set(flows.ParamPod, local.Name)
	q.Set(agent.ParamDirection, dir)
	q.Set(agent.ParamRemote, remote)
	q.Set(flows.ParamProtocol, dst.proto)
	q.Set(flows.ParamPort, strconv.Itoa(int(dst.port)))
	body, err := ag.get(ctx, agentPod, agent.ExplainPath, q)
	if err != nil {
		return nil, fmt.Errorf("%s of %s/%s: %w", strings.ToLower(dir), local.Namespace, local.Name, err)
	}
	defer body.Close()
	var e agent.Explanation
	if err := json.NewDecoder(body).Decode(&e); err != nil {
		return nil, fmt.Errorf("%s of %s/%s: decoding agent %s's answer: %w", strings.ToLower(dir), local.Namespace, local.Name, agentPod.Name, err)
	}
	return &e, nil
}

func printExplain(w io.Writer, src, dst target, srcPod, dstPod *corev1.Pod, res explainResult) {
	fmt.Fprintf(w, "%s/%s (%s, node %s) -> %s/%s:%d/%s (%s, node %s)\n", src.namespace, src.pod, srcPod.Status.PodIP,
		srcPod.Spec.NodeName, dst.namespace, dst.pod, dst.port, dst.proto, dstPod.Status.PodIP, dstPod.Spec.NodeName)
	line := func(label string, e *agent.Explanation) {
		if e == nil {
			fmt.Fprintf(w, "  %-8s unknown\n", label)
			return
		}
		fmt.Fprintf(w, "  %-8s %-9s %s", label, e.Verdict, e.Reason)
		if len(e.Policies) > 0 {
			var names []string
			for _, p := range e.Policies {
				n := p.Kind + " " + p.Name
				if p.Namespace != "" {
					n = p.Kind + " " + p.Namespace + "/" + p.Name
				}
				names = append(names, n)
			}
			fmt.Fprintf(w, ": %s", strings.Join(names, ", "))
		}
		if e.Rule != "" {
			fmt.Fprintf(w, " %s", e.Rule)
		}
		fmt.Fprintln(w)
		switch dp := e.Datapath; {
		case dp == nil:
		case dp.Error != "":
			fmt.Fprintf(w, "  %-8s maps on %s could not be read: %s\n", "", e.NodeName, dp.Error)
		default:
			mark := "agrees"
			if !e.Agrees {
				mark = "DISAGREES with the policies"
			}
			fmt.Fprintf(w, "  %-8s maps on %s: %s, %s", "", e.NodeName, dp.Verdict, dp.Reason)
			if dp.Rule != "" && dp.Policy != nil {
				fmt.Fprintf(w, " (%s %s %s)", dp.Policy.Kind, dp.Policy.Name, dp.Rule)
			}
			fmt.Fprintf(w, " [remote identity %d] %s\n", dp.RemoteIdentity, mark)
		}
	}
	line("egress", res.Egress)
	line("ingress", res.Ingress)
	fmt.Fprintf(w, "verdict: %s\n", res.Verdict)
}
