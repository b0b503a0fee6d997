package bpf

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/flatnet/flatnet/dataplane/identity"
	"github.com/flatnet/flatnet/dataplane/ipv4"
)

// DefaultPinDir is where the agent pins the datapath.
const DefaultPinDir = "/sys/fs/bpf/flatnet"

// Direction codes of the C side (DIR_INGRESS / DIR_EGRESS).
const (
	dirIngress = 0
	dirEgress  = 1
)

// Datapath is the loaded datapath: maps pinned in PinDir, programs attached to
// endpoints through tcx links pinned in PinDir/links. Methods are safe for concurrent
// use.
type Datapath struct {
	pinDir string
	objs   datapathObjects
	inner  *ebpf.MapSpec // an endpoint's policy map
	ctEst  *ebpf.MapSpec // an endpoint's table of established connections, sized by Options

	mu       sync.Mutex
	up       *upgrade          // pinned maps of another layout being taken over (upgrade.go); nil: none
	upgraded Upgrade           // what a finished upgrade did
	orphans  orphans           // forgotten endpoints whose connections are still in fn_ct (conntrack.go)
	prepared map[int]*ebpf.Map // interfaces of the warm pool, with their empty policy maps (prepare.go)

	hookMu   sync.Mutex
	filtered map[int]bool // endpoints with a direction on a filter, not yet moved to tcx (hook.go)

	// The IP cache is two layers over one map: identities the compiler gives pod and
	// node addresses, and the Service flag of Service addresses (ClusterIPs,
	// externalIPs, LoadBalancer IPs), which may also be a node's or pod's.
	ipMu     sync.Mutex
	ipIDs    map[ipv4.Prefix]identity.ID
	services map[ipv4.Prefix]bool

	revMu sync.Mutex
	rev   uint16 // the policy revision last written (revision.go)
}

// Endpoint is what the datapath needs to know of a local pod's attachment.
type Endpoint struct {
	IfIndex  int        // host-side veth
	IP       netip.Addr // pod IPv4
	Identity identity.ID
	// MAC is the pod interface's: with it, traffic from other local pods is handed
	// straight to the pod (bpf_redirect_peer); without it, through its host veth.
	MAC net.HardwareAddr
}

// Load is LoadWith with the default Options.
func Load(ctx context.Context, pinDir string) (*Datapath, error) {
	return LoadWith(ctx, pinDir, Options{})
}

// LoadWith loads the programs, creating the maps in pinDir or reusing the ones a
// previous agent pinned there, and moves every pinned endpoint link to the freshly
// loaded programs in one atomic step per link: an agent restart or upgrade never
// leaves an endpoint without its programs or with empty maps. When pinned maps have
// another layout (an upgrade), the previous programs keep them and keep enforcing,
// and each endpoint moves to the new programs when AttachEndpoint has written its
// part of the new maps (upgrade.go; Upgrade reports it).
func LoadWith(ctx context.Context, pinDir string, opts Options) (*Datapath, error) {
	ctShared, ctEst, err := opts.sizes()
	if err != nil {
		return nil, err
	}
	if err := checkBPFFS(filepath.Dir(pinDir)); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(pinDir, "links"), 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("loading datapath spec: %w", err)
	}
	d := &Datapath{pinDir: pinDir, inner: spec.Maps[datapathMapFnPolicyProto].Copy(),
		ipIDs: map[ipv4.Prefix]identity.ID{}, services: map[ipv4.Prefix]bool{}}
	d.inner.Name = "fn_ep_policy"
	spec.Maps[datapathMapFnCt].MaxEntries = ctShared
	d.ctEst = spec.Maps[datapathMapFnCtEstProto].Copy()
	d.ctEst.Name = "fn_ep_ct_est"
	d.ctEst.MaxEntries = ctEst
	if d.up, err = prepareUpgrade(spec, pinDir); err != nil {
		return nil, err
	}
	fail := func(err error) (*Datapath, error) {
		d.objs.Close()
		if d.up != nil {
			for _, m := range d.up.retired {
				m.Close()
			}
		}
		return nil, err
	}
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}})
	if err != nil {
		return fail(fmt.Errorf("loading datapath into the kernel: %w", err))
	}
	// Pinned, the slot outlives this agent; the next one puts its own program there.
	if err := d.objs.FnCalls.Put(uint32(0), d.objs.DeliverToPod); err != nil {
		return fail(fmt.Errorf("installing deliver_to_pod for tail calls: %w", err))
	}
	// Endpoints of a version without tables of established connections get theirs.
	eps, err := d.Endpoints(ctx)
	if err != nil {
		return fail(err)
	}
	if err := errors.Join(d.ensureEstTables(slices.Collect(maps.Keys(eps)))...); err != nil {
		return fail(err)
	}
	if err := d.resumeLinks(ctx); err != nil {
		return fail(err)
	}
	if d.up != nil {
		for ifindex := range d.up.pending {
			if err := d.ensureEstTable(ifindex); err != nil {
				return fail(err)
			}
		}
		if err := d.convert(); err != nil {
			return fail(err)
		}
	} else if _, _, err := d.spreadCT(d.objs.FnCt, func(*datapathCtKey) bool { return true }, true); err != nil {
		// Established connections a version without per-endpoint tables tracked.
		return fail(fmt.Errorf("moving established connections into their endpoints' tables: %w", err))
	}
	if err := d.finishUpgrade(); err != nil {
		return fail(err)
	}
	if err := d.loadRevision(); err != nil {
		return fail(err)
	}
	return d, nil
}

// EnsureBPFFS mounts a bpffs on dir unless one is there. For pins to outlive the agent
// the mount must be the node's: give the agent the host's /sys/fs/bpf (hostPath, with
// Bidirectional mount propagation if the agent is the one mounting it).
func EnsureBPFFS(dir string) error {
	if checkBPFFS(dir) == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s for bpffs: %w", dir, err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mounting bpffs on %s: %w", dir, err)
	}
	return nil
}

func checkBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("checking bpffs at %s: %w", dir, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not a bpffs mount: mount it with `mount -t bpf bpf %s`", dir, dir)
	}
	return nil
}

// Close releases this process's handles; pinned maps and links stay in the kernel,
// so endpoints keep their policy while no agent runs.
func (d *Datapath) Close() error {
	return d.objs.Close()
}

// PinDir is where the datapath is pinned.
func (d *Datapath) PinDir() string { return d.pinDir }
