package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/flatnet/flatnet/dataplane/ipam"
	"github.com/flatnet/flatnet/internal/apiservertest"
)

// newClient returns a Client on a real kube-apiserver (with etcd, through
// envtest) holding the shipped IPBlock CRD, each test in a fresh API server
// state (all IPBlocks deleted). Without those binaries it falls back to
// client-go's object tracker, which refuses a second Create of a name with
// AlreadyExists as the API server does (the one property the claim protocol
// relies on) but enforces no schema.
func newClient(t *testing.T) *Client {
	t.Helper()
	dyn := realAPIServer(t)
	if dyn == nil {
		t.Log("no kube-apiserver/etcd found (make node-image builds them, or set KUBEBUILDER_ASSETS): using client-go's fake dynamic client")
		return New(fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{GVR: "IPBlockList"}))
	}
	if err := dyn.Resource(GVR).DeleteCollection(context.Background(), metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatalf("clean IPBlocks: %v", err)
	}
	return New(dyn)
}

var (
	apiOnce sync.Once
	apiDyn  dynamic.Interface
	apiStop func() error
	apiErr  error
)

func realAPIServer(t *testing.T) dynamic.Interface {
	apiOnce.Do(func() {
		dir := apiservertest.Assets()
		if dir == "" {
			return
		}
		apiDyn, apiStop, apiErr = apiservertest.Start(dir, filepath.Join("..", "..", "manifests", "crds", "flatnet.io_ipblocks.yaml"))
	})
	if apiErr != nil {
		t.Fatal(apiErr)
	}
	return apiDyn
}

func TestMain(m *testing.M) {
	code := m.Run()
	if apiStop != nil {
		apiStop()
	}
	os.Exit(code)
}

// The CRD's schema and CEL rule hold on a real API server: a claimed block's
// spec cannot change, and a size outside 10..250 is refused.
func TestCRDRefusesSpecChangesAndBadSizes(t *testing.T) {
	apiservertest.Require(t)
	dyn := realAPIServer(t)
	ctx := context.Background()
	c := newClient(t)
	b, _, err := c.EnsureNodeBlock(ctx, kindLayout, "n1", nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := dyn.Resource(GVR).Get(ctx, b.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	unstructured.SetNestedField(obj.Object, "thief", "spec", "node")
	if _, err := dyn.Resource(GVR).Update(ctx, obj, metav1.UpdateOptions{}); err == nil || !strings.Contains(err.Error(), "fixed once claimed") {
		t.Fatalf("changing spec.node: %v, want the CRD's immutability message", err)
	}
	bad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": APIVersion, "kind": Kind, "metadata": map[string]any{"name": "bad"},
		"spec": map[string]any{"subnet": "10.224.0.0/16", "index": int64(9), "first": "10.224.1.0", "size": int64(5), "node": "n2"},
	}}
	if _, err := dyn.Resource(GVR).Create(ctx, bad, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "spec.size") {
		t.Fatalf("creating a block of 5: %v, want a spec.size error", err)
	}
}

var kindLayout = ipam.Layout{
	Subnet:      netip.MustParsePrefix("10.224.0.0/16"),
	Gateway:     netip.MustParseAddr("10.224.0.1"),
	DockerRange: netip.MustParsePrefix("10.224.0.0/27"),
	BlockSize:   30,
}

func TestEnsureNodeBlockKeepsTheSameBlock(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	a, created, err := c.EnsureNodeBlock(ctx, kindLayout, "kind-worker", nil)
	if err != nil || !created {
		t.Fatalf("first claim: %v created=%v", err, created)
	}
	if a.Spec.First != "10.224.0.32" || a.Spec.Size != 30 || a.Name != "10-224-0-0-16-0" || a.Spec.Node != "kind-worker" {
		t.Fatalf("first block %+v, want block 0 at 10.224.0.32 (first address after docker's range)", a.Spec)
	}
	// Agent restart, or the node re-created under its name: same block.
	again, created, err := c.EnsureNodeBlock(ctx, kindLayout, "kind-worker", nil)
	if err != nil || created || again.Name != a.Name {
		t.Fatalf("second call: %s created=%v err=%v, want %s unchanged", again.Name, created, err, a.Name)
	}
	b, _, err := c.EnsureNodeBlock(ctx, kindLayout, "kind-worker2", nil)
	if err != nil || b.Spec.First != "10.224.0.62" {
		t.Fatalf("second node: %+v %v, want the next block at 10.224.0.62", b.Spec, err)
	}
	// Releasing frees the index for the next node.
	if names, err := c.ReleaseNodeBlocks(ctx, "kind-worker"); err != nil || len(names) != 1 {
		t.Fatalf("release: %v %v", names, err)
	}
	d, _, _ := c.EnsureNodeBlock(ctx, kindLayout, "kind-worker3", nil)
	if d.Name != a.Name {
		t.Fatalf("after release the next node got %s, want the freed %s", d.Name, a.Name)
	}
}

func TestConcurrentNodesNeverOverlap(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	const nodes = 40
	got := make([]IPBlock, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { got[i], _, errs[i] = c.EnsureNodeBlock(ctx, kindLayout, fmt.Sprintf("node-%d", i), nil) })
	}
	wg.Wait()
	checkDisjoint(t, got, errs)
	all, _ := c.List(ctx)
	if len(all) != nodes {
		t.Fatalf("%d IPBlocks for %d nodes", len(all), nodes)
	}
}

func TestNodeIPsAndOtherSizesAreAvoided(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	// A node address outside docker's range, inside block 0: block 0 is skipped.
	b, _, err := c.EnsureNodeBlock(ctx, kindLayout, "n1", []netip.Addr{netip.MustParseAddr("10.224.0.40")})
	if err != nil || b.Spec.Index != 1 {
		t.Fatalf("got %+v %v, want index 1 (block 0 holds a node IP)", b.Spec, err)
	}
	// A block of another size, claimed earlier under a name this layout would use.
	big := kindLayout
	big.BlockSize = 50
	o, _, err := c.EnsureNodeBlock(ctx, big, "n2", nil)
	if err != nil {
		t.Fatal(err)
	}
	ob, _ := o.Block()
	n3, _, err := c.EnsureNodeBlock(ctx, kindLayout, "n3", nil)
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := n3.Block()
	if nb.Overlaps(ob) {
		t.Fatalf("n3's %s overlaps n2's %s of another size", nb, ob)
	}
}

// TestReservedRangeIsNeverClaimed: nodes claiming at once on the API server
// fill a small subnet to exhaustion and none gets a block overlapping the
// reserved range (the test world's TEST_WORLD_CIDR).
func TestReservedRangeIsNeverClaimed(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	world := netip.MustParsePrefix("10.9.0.64/28")
	l := ipam.Layout{Subnet: netip.MustParsePrefix("10.9.0.0/25"), Gateway: netip.MustParseAddr("10.9.0.1"), Reserved: []netip.Prefix{world}, BlockSize: 30}
	// 10.9.0.2 .. 10.9.0.126: four blocks of 30, the third (.62-.91) holding the reserved range.
	const nodes = 4
	got := make([]IPBlock, nodes)
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { got[i], _, errs[i] = c.EnsureNodeBlock(ctx, l, fmt.Sprintf("node-%d", i), nil) })
	}
	wg.Wait()
	claimed := 0
	for i, err := range errs {
		if errors.Is(err, ipam.ErrExhausted) {
			continue
		}
		if err != nil {
			t.Fatalf("node-%d: %v", i, err)
		}
		claimed++
		b, err := got[i].Block()
		if err != nil {
			t.Fatal(err)
		}
		if b.Contains(world.Addr()) || world.Contains(b.First) {
			t.Fatalf("node-%d got %s, overlapping the reserved %s", i, b, world)
		}
	}
	if claimed != 3 {
		t.Fatalf("%d nodes got a block, want 3 (one of the four holds the reserved range): %v", claimed, errs)
	}
}

func TestExhaustedSubnet(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	small := ipam.Layout{Subnet: netip.MustParsePrefix("10.9.0.0/26"), Gateway: netip.MustParseAddr("10.9.0.1"), BlockSize: 30}
	// 10.9.0.2 .. 10.9.0.62: two blocks of 30.
	for i := range 2 {
		if _, _, err := c.EnsureNodeBlock(ctx, small, fmt.Sprintf("n%d", i), nil); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	_, _, err := c.EnsureNodeBlock(ctx, small, "n2", nil)
	if !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("third node: %v, want ErrExhausted", err)
	}
}

func TestUpdateStatus(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	b, _, _ := c.EnsureNodeBlock(ctx, kindLayout, "n1", nil)
	st := IPBlockStatus{Used: 1, MaxPods: 30, Allocations: []Allocation{{IP: "10.224.0.33", PodNamespace: "default", PodName: "p", ContainerID: "c1"}}}
	if err := c.UpdateStatus(ctx, b.Name, st); err != nil {
		t.Fatal(err)
	}
	all, _ := c.List(ctx)
	if len(all) != 1 || all[0].Status.Used != 1 || len(all[0].Status.Allocations) != 1 || all[0].Status.Allocations[0].PodName != "p" || all[0].Status.UpdateTime == nil {
		t.Fatalf("status read back: %+v", all[0].Status)
	}
}

func TestReportCountsNodesAndPreallocatedBlocks(t *testing.T) {
	mk := func(i int, node, first string, allocs ...Allocation) IPBlock {
		return IPBlock{Spec: IPBlockSpec{Subnet: "10.224.0.0/16", Index: i, First: first, Size: 30, Node: node}, Status: IPBlockStatus{Used: len(allocs), Allocations: allocs}}
	}
	blocks := []IPBlock{
		mk(0, "w1", "10.224.0.32", Allocation{IP: "10.224.0.40", PodNamespace: "default", PodName: "web", ContainerID: "aaa"}),
		mk(1, "w2", "10.224.0.62", Allocation{IP: "10.224.0.63", ContainerID: "0123456789abcdef"}),
		mk(2, "cp", "10.224.0.92"),
		{Spec: IPBlockSpec{Subnet: "10.9.0.0/16", First: "10.9.0.32", Size: 30, Node: "elsewhere"}},
	}
	nodes := []NodeAddr{{"cp", netip.MustParseAddr("10.224.0.2")}, {"w1", netip.MustParseAddr("10.224.0.3")}, {"w2", netip.MustParseAddr("10.224.0.4")}, {"off", netip.MustParseAddr("192.168.1.1")}}
	r := Report(netip.MustParsePrefix("10.224.0.0/16"), netip.MustParseAddr("10.224.0.1"), blocks, nodes)
	// 65536 addresses - network - broadcast - gateway; 3 nodes + 3 blocks of 30.
	if r.Limit != 65533 || r.CurrentValue != 93 || r.Nodes != 3 || r.PodsAssigned != 2 || len(r.Blocks) != 3 {
		t.Fatalf("report %+v", r)
	}
	var got []string
	for _, d := range r.Devices {
		got = append(got, fmt.Sprintf("%s %s %s/%s %s", d.IP, d.Kind, d.Namespace, d.Name, d.Node))
	}
	want := []string{"10.224.0.2 node /cp cp", "10.224.0.3 node /w1 w1", "10.224.0.4 node /w2 w2", "10.224.0.40 pod default/web w1", "10.224.0.63 pod /(container 0123456789ab) w2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("devices\n got %q\nwant %q", got, want)
	}
	az := r.Azure("kind-flatnet")
	if len(az.Value) != 1 || az.Value[0].Name.Value != "SubnetSpace" || az.Value[0].Unit != "Count" || az.Value[0].CurrentValue != 93 || az.Value[0].Limit != 65533 {
		t.Fatalf("azure usage %+v", az)
	}
}

// slowCreates holds every Create back until all claimers have listed, the
// widest race window a real API server allows: each node decides from a
// list that shows none of the others' blocks. The tracker underneath keeps
// the API server's properties the claim protocol may rely on: a second
// Create of a name fails with AlreadyExists, and a List returns every object
// whose Create returned before it (etcd's quorum read).
type slowCreates struct {
	dynamic.NamespaceableResourceInterface
	listed *sync.WaitGroup
	once   sync.Map
}

func (s *slowCreates) List(ctx context.Context, o metav1.ListOptions) (*unstructured.UnstructuredList, error) {
	l, err := s.NamespaceableResourceInterface.List(ctx, o)
	if _, done := s.once.LoadOrStore(ctx.Value(claimerKey{}), true); !done {
		s.listed.Done()
	}
	return l, err
}

func (s *slowCreates) Create(ctx context.Context, obj *unstructured.Unstructured, o metav1.CreateOptions, sub ...string) (*unstructured.Unstructured, error) {
	s.listed.Wait()
	return s.NamespaceableResourceInterface.Create(ctx, obj, o, sub...)
}

type claimerKey struct{}

// Nodes with different maxPods (block sizes) joining at once get blocks of
// different sizes whose indexes, and so names, differ although their
// addresses overlap: name uniqueness alone does not keep them apart.
// It runs on client-go's object tracker and, when kube-apiserver and etcd are
// at hand (see newClient), on the real API server too.
func TestConcurrentNodesOfDifferentSizesNeverOverlap(t *testing.T) {
	t.Run("tracker", func(t *testing.T) {
		concurrentSizes(t, 20, func() dynamic.Interface {
			return fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{GVR: "IPBlockList"})
		})
	})
	t.Run("kube-apiserver", func(t *testing.T) {
		apiservertest.Require(t)
		dyn := realAPIServer(t)
		concurrentSizes(t, 5, func() dynamic.Interface {
			newClient(t) // deletes every IPBlock
			return dyn
		})
	})
}

func concurrentSizes(t *testing.T, rounds int, fresh func() dynamic.Interface) {
	sizes := []int{10, 17, 30, 50, 64, 110, 250}
	for round := range rounds {
		dyn := fresh()
		const nodes = 14
		var listed sync.WaitGroup
		listed.Add(nodes)
		c := &Client{res: &slowCreates{NamespaceableResourceInterface: dyn.Resource(GVR), listed: &listed}}
		got := make([]IPBlock, nodes)
		errs := make([]error, nodes)
		var wg sync.WaitGroup
		for i := range nodes {
			l := kindLayout
			l.BlockSize = sizes[(i+round)%len(sizes)]
			wg.Go(func() {
				ctx := context.WithValue(context.Background(), claimerKey{}, i)
				got[i], _, errs[i] = c.EnsureNodeBlock(ctx, l, fmt.Sprintf("node-%d", i), nil)
			})
		}
		wg.Wait()
		checkDisjoint(t, got, errs)
		// What the API server holds afterwards is disjoint too, one block per node.
		all, err := New(dyn).List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		checkDisjoint(t, all, make([]error, len(all)))
		if len(all) != nodes {
			t.Fatalf("round %d: %d IPBlocks for %d nodes", round, len(all), nodes)
		}
	}
}

func checkDisjoint(t *testing.T, got []IPBlock, errs []error) {
	t.Helper()
	for i := range got {
		if errs[i] != nil {
			t.Fatalf("node %d: %v", i, errs[i])
		}
		b, err := got[i].Block()
		if err != nil {
			t.Fatal(err)
		}
		for j := range i {
			o, _ := got[j].Block()
			if b.Overlaps(o) {
				t.Fatalf("%s's block %s (%s) overlaps %s's %s (%s)", got[i].Spec.Node, got[i].Name, b, got[j].Spec.Node, got[j].Name, o)
			}
		}
	}
}

// A claimer that stopped between Create and the confirmation left an
// unconfirmed block, and another node meanwhile confirmed an overlapping one:
// the restarted claimer gives its block up and claims a disjoint one. An
// unconfirmed block that overlaps nothing (one claimed before confirmation
// existed) is kept and confirmed.
func TestUnconfirmedBlockIsCheckedBeforeUse(t *testing.T) {
	ctx := context.Background()
	c := newClient(t)
	big := kindLayout
	big.BlockSize = 50
	y, _, err := c.EnsureNodeBlock(ctx, big, "y", nil) // 10.224.0.32-81, confirmed
	if err != nil {
		t.Fatal(err)
	}
	half := IPBlock{
		TypeMeta:   metav1.TypeMeta{Kind: Kind, APIVersion: APIVersion},
		ObjectMeta: metav1.ObjectMeta{Name: BlockName(kindLayout.Subnet, 1)},
		Spec:       IPBlockSpec{Subnet: "10.224.0.0/16", Index: 1, First: "10.224.0.62", Size: 30, Node: "x"},
	}
	obj, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(&half)
	if _, err := c.res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	x, created, err := c.EnsureNodeBlock(ctx, kindLayout, "x", nil)
	if err != nil || !created {
		t.Fatalf("x: %v created=%v, want a new block", err, created)
	}
	checkDisjoint(t, []IPBlock{y, x}, []error{nil, nil})
	all, _ := c.List(ctx)
	if len(all) != 2 {
		t.Fatalf("%d blocks left, want y's and x's new one (the unconfirmed one deleted)", len(all))
	}
	// An old unconfirmed block overlapping nothing stays its node's.
	old := half
	old.Name, old.Spec.Index, old.Spec.First, old.Spec.Node = BlockName(kindLayout.Subnet, 9), 9, "10.224.1.46", "z"
	obj, _ = runtime.DefaultUnstructuredConverter.ToUnstructured(&old)
	if _, err := c.res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	z, created, err := c.EnsureNodeBlock(ctx, kindLayout, "z", nil)
	if err != nil || created || z.Name != old.Name || z.Annotations[ClaimAnnotation] != claimConfirmed {
		t.Fatalf("z: %s created=%v annotations=%v err=%v, want %s kept and confirmed", z.Name, created, z.Annotations, err, old.Name)
	}
}

// A status update between the claim's Create and its confirmation makes the
// confirmation's Update conflict: it reads the block again and confirms it,
// never giving up a good block.
func TestConfirmationSurvivesAConflict(t *testing.T) {
	dyn := fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{GVR: "IPBlockList"})
	conflicts := 2
	dyn.PrependReactor("update", "ipblocks", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if conflicts > 0 {
			conflicts--
			return true, nil, apierrors.NewConflict(GVR.GroupResource(), "x", errors.New("the object has been modified"))
		}
		return false, nil, nil
	})
	b, created, err := New(dyn).EnsureNodeBlock(context.Background(), kindLayout, "n1", nil)
	if err != nil || !created || b.Annotations[ClaimAnnotation] != claimConfirmed || b.Spec.Index != 0 {
		t.Fatalf("claim after 2 conflicts: %+v created=%v err=%v, want block 0 created and confirmed", b.ObjectMeta, created, err)
	}
}
