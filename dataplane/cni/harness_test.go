package cni_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/flatnet/flatnet/dataplane/endpointapi"
	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/dataplane/ipam/nodealloc"
	"github.com/flatnet/flatnet/dataplane/podnet/podnettest"
)

// pluginDir holds the flatnet, portmap and loopback binaries built once for
// all tests: the tests run the real plugin executables through libcni, as a
// runtime does. flatnet runs portmap itself for pods with hostPorts; loopback
// is there for the conflist of earlier releases (oldConflist).
var pluginDir string

func TestMain(m *testing.M) {
	os.Exit(podnettest.MainWithPlugins(m, &pluginDir, "flatnet", "portmap", "loopback"))
}

// node is a network namespace standing in for a kind node: an uplink "eth0"
// on the node subnet and the plugin's state directory.
type node struct {
	*podnettest.Node
	name    string
	block   ipam.Block
	dataDir string
	socket  string // agent socket, "" for none
	cache   string
}

const subnet = "10.224.0.0/16"

// newNode makes a node with a veth uplink holding ip (e.g. 10.224.0.2/16).
func newNode(t testing.TB, name, ip string, block ipam.Block) *node {
	t.Helper()
	return &node{Node: podnettest.NewNode(t, ip), name: name, block: block, dataDir: t.TempDir(), cache: t.TempDir()}
}

func (n *node) netConf() map[string]any {
	c := map[string]any{
		"type": "flatnet", "nodeName": n.name, "uplink": "eth0",
		"subnet": subnet, "gateway": "10.224.0.1", "dockerRange": "10.224.0.0/27",
		"block":   map[string]any{"first": n.block.First.String(), "size": n.block.Size},
		"dataDir": n.dataDir,
	}
	if n.socket != "" {
		c["agentSocket"] = n.socket
	}
	return c
}

// conflist renders the node's conflist the way the agent does (flatnet
// alone, with the portMappings capability), with edit applied to the flatnet
// plugin's config first.
func (n *node) conflist(edit func(map[string]any)) *libcni.NetworkConfigList {
	n.T.Helper()
	c := n.netConf()
	c["capabilities"] = map[string]bool{"portMappings": true}
	if edit != nil {
		edit(c)
	}
	return n.list(c)
}

// oldConflist is the conflist agents wrote before flatnet set up loopback and
// ran portmap itself: portmap and loopback chained after flatnet.
func (n *node) oldConflist() *libcni.NetworkConfigList {
	return n.list(n.netConf(),
		map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		map[string]any{"type": "loopback"})
}

func (n *node) list(plugins ...any) *libcni.NetworkConfigList {
	n.T.Helper()
	b, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "flatnet", "plugins": plugins})
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		n.T.Fatalf("conflist: %v", err)
	}
	return l
}

func (n *node) cniConfig() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir([]string{pluginDir}, n.cache, nil)
}

func rt(id string, podNS ns.NetNS) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: id, NetNS: podNS.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "pod-" + id}},
	}
}

// add runs ADD of list for a new pod netns and returns the result.
func (n *node) add(list *libcni.NetworkConfigList, id string, podNS ns.NetNS) (*current.Result, error) {
	return n.addRuntime(list, rt(id, podNS))
}

// addRuntime is add with the runtime's arguments rc.
func (n *node) addRuntime(list *libcni.NetworkConfigList, rc *libcni.RuntimeConf) (*current.Result, error) {
	var res types.Result
	var err error
	n.Do(func() error {
		res, err = n.cniConfig().AddNetworkList(context.Background(), list, rc)
		return nil
	})
	if err != nil {
		return nil, err
	}
	r, cerr := current.NewResultFromResult(res)
	if cerr != nil {
		n.T.Fatalf("convert result: %v", cerr)
	}
	return r, nil
}

func (n *node) mustAdd(id string, podNS ns.NetNS) netip.Addr {
	n.T.Helper()
	r, err := n.add(n.conflist(nil), id, podNS)
	if err != nil {
		n.T.Fatalf("ADD %s: %v", id, err)
	}
	return resultIP(n.T, r)
}

func resultIP(t testing.TB, r *current.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d IPs, want 1: %+v", len(r.IPs), r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	if ones, _ := r.IPs[0].Address.Mask.Size(); ones != 32 {
		t.Fatalf("result address %s is not a /32", r.IPs[0].Address.String())
	}
	return a
}

func (n *node) del(id string, netnsPath string) error {
	var err error
	n.Do(func() error {
		err = n.cniConfig().DelNetworkList(context.Background(), n.conflist(nil),
			&libcni.RuntimeConf{ContainerID: id, NetNS: netnsPath, IfName: "eth0"})
		return nil
	})
	return err
}

func (n *node) check(id string, podNS ns.NetNS) error {
	var err error
	n.Do(func() error {
		err = n.cniConfig().CheckNetworkList(context.Background(), n.conflist(nil), rt(id, podNS))
		return nil
	})
	return err
}

func (n *node) allocations() []nodealloc.Allocation {
	n.T.Helper()
	all, err := nodealloc.New(n.dataDir).List(context.Background())
	if err != nil {
		n.T.Fatalf("list allocations: %v", err)
	}
	return all
}

func (n *node) state() podnettest.HostState {
	n.T.Helper()
	return podnettest.ReadHostState(n.T, n.NS, "eth0")
}

func (n *node) requireClean(what string) {
	n.T.Helper()
	if s := n.state(); len(s.Veths)+len(s.Proxies)+len(s.Routes) > 0 {
		n.T.Errorf("%s: node %s still has flatnet plumbing: %+v", what, n.name, s)
	}
	if a := n.allocations(); len(a) > 0 {
		n.T.Errorf("%s: node %s still holds allocations: %v", what, n.name, a)
	}
}

// cniError unwraps the plugin's error result.
func cniError(t testing.TB, err error) *types.Error {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error result", err, err)
	}
	return e
}

// agent is a stand-in for the node agent's endpoint API, served on a real
// unix socket with the real endpointapi server code; it records what the
// plugin registers and can refuse or stall.
type agent struct {
	mu      sync.Mutex
	eps     map[string]endpointapi.Endpoint
	deleted []string
	refuse  error
	stall   chan struct{} // when set, PUT signals on entered and blocks until stall is closed or ctx ends
	entered chan string
	obs     []endpointapi.Observation
	calls   []string // every request: "METHOD path", "+started" when a PUT carries the ADD's start, "+phases=a,b" its phases, "+sched" its process's scheduling
}

func (a *agent) PutEndpoint(ctx context.Context, ep endpointapi.Endpoint) error {
	a.mu.Lock()
	refuse, stall := a.refuse, a.stall
	a.mu.Unlock()
	if stall != nil {
		a.entered <- ep.ContainerID
		select {
		case <-stall: // answers late, as a busy agent does
		case <-ctx.Done():
			return errors.New("stalled")
		}
	}
	if refuse != nil {
		return refuse
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.eps[ep.ContainerID] = ep
	return nil
}

func (a *agent) DeleteEndpoint(_ context.Context, id string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.eps, id)
	a.deleted = append(a.deleted, id)
	return nil
}

func startAgent(t *testing.T, n *node) *agent {
	t.Helper()
	n.socket = filepath.Join(t.TempDir(), "agent.sock")
	return startAgentAt(t, n.socket)
}

func startAgentAt(t *testing.T, path string) *agent {
	t.Helper()
	a := &agent{eps: map[string]endpointapi.Endpoint{}}
	l, err := endpointapi.ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api := endpointapi.NewHTTPHandler(a)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		call := r.Method + " " + r.URL.Path
		if _, err := time.Parse(time.RFC3339Nano, r.Header.Get(endpointapi.AddStartedHeader)); err == nil {
			call += " +started"
		}
		if phases, err := endpointapi.ParseAddPhases(r.Header.Get(endpointapi.AddPhasesHeader)); err == nil && len(phases) > 0 {
			var names []string
			for _, p := range phases {
				names = append(names, p.Name)
			}
			call += " +phases=" + strings.Join(names, ",")
		}
		// The plugin's scheduling as the kernel counted it: time on a CPU, never
		// none, and time waiting for one.
		if sched, err := endpointapi.ParseAddPhases(r.Header.Get(endpointapi.AddSchedHeader)); err == nil &&
			len(sched) == 2 && sched[0].Name == "oncpu" && sched[0].Took > 0 && sched[1].Name == "runqueue" {
			call += " +sched"
		}
		a.mu.Lock()
		a.calls = append(a.calls, call)
		a.mu.Unlock()
		api.ServeHTTP(w, r)
	})
	mux.HandleFunc("POST "+endpointapi.ObservationPath, func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.calls = append(a.calls, r.Method+" "+r.URL.Path)
		a.mu.Unlock()
		var o endpointapi.Observation
		if json.NewDecoder(r.Body).Decode(&o) == nil {
			a.mu.Lock()
			a.obs = append(a.obs, o)
			a.mu.Unlock()
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return a
}
