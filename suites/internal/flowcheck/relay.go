package flowcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/flatnet/flatnet/suites/internal/portforward"
)

// The relay the flows are read from, as suites/hubble reaches it: flatnet's
// deploy runs it as flatnet-system/hubble-relay:80 (Cilium's chart as
// kube-system/hubble-relay:80, when hubble.relay is enabled).
const (
	RelayEnv     = "FLATNET_HUBBLE_RELAY"
	DefaultRelay = "flatnet-system/hubble-relay:80"
)

// Relay is a gRPC connection to the Hubble relay through a port-forward to
// the pod behind its Service, as `cilium hubble port-forward` makes.
type Relay struct {
	Forward *portforward.Forward
	conn    *grpc.ClientConn
	Client  observerpb.ObserverClient
}

// Close ends the connection and the port-forward.
func (r *Relay) Close() {
	if r == nil {
		return
	}
	_ = r.conn.Close()
	r.Forward.Close()
}

// Setup chooses the mode and connects to the relay. chosen is the mode the
// user asked for (Choose), "" for the default: strict when the relay's
// Service exists (flatnet's deploy runs one), off when it does not (a CNI
// without a Hubble relay, such as cilium-ref, whose values leave
// hubble.relay disabled). A mode asked for against a cluster without a
// reachable relay is an error naming relayEnv. The note says what was chosen
// and why, for the report. The Checker is nil when the mode is off.
func Setup(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, chosen Mode, relaySpec string, log io.Writer) (*Checker, *Relay, string, error) {
	if relaySpec == "" {
		relaySpec = DefaultRelay
	}
	if chosen == Off {
		return nil, nil, "flow validation off (asked for)", nil
	}
	target, err := portforward.ParseTarget(relaySpec)
	if err != nil {
		return nil, nil, "", fmt.Errorf("%s: %w", RelayEnv, err)
	}
	if chosen == "" {
		_, err := cs.CoreV1().Services(target.Namespace).Get(ctx, target.Service, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			return nil, nil, fmt.Sprintf("flow validation off: no Hubble relay Service %s in this cluster (set %s=<ns>/<service>:<port> and --%s=strict to validate)", target, RelayEnv, FlagName), nil
		case err != nil:
			return nil, nil, "", fmt.Errorf("looking for the Hubble relay Service %s: %w", target, err)
		}
		chosen = Strict
	}
	fwd, err := startForward(ctx, cfg, cs, target, log)
	if err != nil {
		return nil, nil, "", fmt.Errorf("flow validation %s needs the Hubble relay: %w (%s=<ns>/<service>:<port> names another, --%s=off runs without)", chosen, err, RelayEnv, FlagName)
	}
	conn, err := grpc.NewClient(fwd.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fwd.Close()
		return nil, nil, "", fmt.Errorf("dialing the Hubble relay at %s: %w", fwd.Addr(), err)
	}
	r := &Relay{Forward: fwd, conn: conn, Client: observerpb.NewObserverClient(conn)}
	note := fmt.Sprintf("flow validation %s: every cell's verdict checked against its flows, read from the Hubble relay %s", chosen, target)
	return &Checker{Client: r.Client, Mode: chosen}, r, note, nil
}

// relayWait bounds the wait for a Ready relay pod: right after the agents were
// rolled out or a node restarted, the relay reports NOT_SERVING until it has
// reconnected to the agents (its retry-timeout), and a suite started then
// should wait for it rather than fail.
const relayWait = 90 * time.Second

// startForward is portforward.Start, waiting up to relayWait while the Service
// has no Ready pod.
func startForward(ctx context.Context, cfg *rest.Config, cs kubernetes.Interface, target portforward.Target, log io.Writer) (*portforward.Forward, error) {
	deadline := time.Now().Add(relayWait)
	for {
		fwd, err := portforward.Start(ctx, cfg, cs, target, log)
		if err == nil || !errors.Is(err, portforward.ErrNoReadyPod) || time.Now().After(deadline) {
			return fwd, err
		}
		fmt.Fprintf(log, "waiting up to %s for a Ready Hubble relay: %v\n", time.Until(deadline).Round(time.Second), err)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(2 * time.Second):
		}
	}
}
