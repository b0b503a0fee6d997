// Package cluster is the cluster-wide record of which node owns which block
// of the node subnet: one cluster-scoped IPBlock object (flatnet.io/v1alpha1)
// per block, claimed by Create (see package ipam's doc for why). It speaks to
// the API server through the dynamic client, so no generated clientset is
// needed for one small type.
package cluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"

	"github.com/flatnet/flatnet/dataplane/ipam"
)

// GVR is the IPBlock resource.
var GVR = schema.GroupVersionResource{Group: "flatnet.io", Version: "v1alpha1", Resource: "ipblocks"}

// Kind and APIVersion of IPBlock objects.
const (
	Kind       = "IPBlock"
	APIVersion = "flatnet.io/v1alpha1"
)

// IPBlock is one block of the node subnet and the node that owns it.
type IPBlock struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              IPBlockSpec   `json:"spec"`
	Status            IPBlockStatus `json:"status,omitempty"`
}

// IPBlockSpec is fixed at claim time.
type IPBlockSpec struct {
	Subnet string `json:"subnet"` // node subnet, e.g. 10.224.0.0/16
	Index  int    `json:"index"`  // block index in the subnet's layout
	First  string `json:"first"`  // first address
	Size   int    `json:"size"`   // number of addresses
	Node   string `json:"node"`   // owning node
}

// IPBlockStatus is the owning agent's report of the block's use.
type IPBlockStatus struct {
	// Used counts addresses held by pod attachments.
	Used int `json:"used"`
	// Allocations lists them, ordered by address.
	Allocations []Allocation `json:"allocations,omitempty"`
	// MaxPods is the node's status.capacity.pods as the agent last saw it.
	MaxPods int `json:"maxPods,omitempty"`
	// UpdateTime is when the agent last wrote the status.
	UpdateTime *metav1.Time `json:"updateTime,omitempty"`
}

// Allocation is one address of the block in use.
type Allocation struct {
	IP           string `json:"ip"`
	PodNamespace string `json:"podNamespace,omitempty"`
	PodName      string `json:"podName,omitempty"`
	ContainerID  string `json:"containerID"`
}

// Block converts the spec into block math, checking it.
func (b *IPBlock) Block() (ipam.Block, error) {
	first, err := netip.ParseAddr(b.Spec.First)
	if err != nil || !first.Is4() || b.Spec.Size < 1 {
		return ipam.Block{}, fmt.Errorf("IPBlock %s: spec.first %q / spec.size %d do not describe a block", b.Name, b.Spec.First, b.Spec.Size)
	}
	return ipam.Block{Index: b.Spec.Index, First: first, Size: b.Spec.Size}, nil
}

// BlockName is the object name of block index i of subnet: 10-224-0-0-16-3.
func BlockName(subnet netip.Prefix, i int) string {
	s := strings.NewReplacer(".", "-", "/", "-").Replace(subnet.Masked().String())
	return fmt.Sprintf("%s-%d", s, i)
}

// Client reads and claims IPBlocks.
type Client struct {
	res dynamic.NamespaceableResourceInterface
}

// New returns a Client over dyn.
func New(dyn dynamic.Interface) *Client { return &Client{res: dyn.Resource(GVR)} }

// List returns every IPBlock, ordered by subnet and index.
func (c *Client) List(ctx context.Context) ([]IPBlock, error) {
	ul, err := c.res.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list IPBlocks (is the flatnet.io CRD installed?): %w", err)
	}
	out := make([]IPBlock, 0, len(ul.Items))
	for i := range ul.Items {
		var b IPBlock
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(ul.Items[i].Object, &b); err != nil {
			return nil, fmt.Errorf("decode IPBlock %s: %w", ul.Items[i].GetName(), err)
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b IPBlock) int {
		if c := strings.Compare(a.Spec.Subnet, b.Spec.Subnet); c != 0 {
			return c
		}
		return a.Spec.Index - b.Spec.Index
	})
	return out, nil
}

// maxClaimAttempts bounds the claim loop: each lost race means another node
// took a block, so with fewer nodes joining at once than this, one wins.
const maxClaimAttempts = 64

// ClaimAnnotation marks a block whose claimer saw no overlapping block after
// creating it; only then is the block handed to pods (see EnsureNodeBlock).
const ClaimAnnotation = "flatnet.io/claim"

// claimConfirmed is ClaimAnnotation's value on a confirmed block.
const claimConfirmed = "confirmed"

// EnsureNodeBlock returns the block node owns in l.Subnet, claiming the
// lowest free one when it owns none. nodeIPs are addresses no block may hold
// (every node's InternalIP). created says whether this call claimed it.
//
// Name uniqueness alone does not keep blocks apart: blocks of different
// sizes (nodes with different maxPods) have different indexes, so two
// overlapping blocks can have different names and both Creates succeed. So
// a claim is Create, then List again: if any other block overlaps the new
// one, the claimer deletes its own and tries again. Of two overlapping
// blocks the one created second always sees the first (a List returns every
// object created before it), so at most one of them survives its check;
// both may retreat, and a random pause keeps them from meeting again. The
// surviving block is then marked confirmed; a block found unconfirmed (its
// claimer stopped between Create and the mark) is checked again before use.
func (c *Client) EnsureNodeBlock(ctx context.Context, l ipam.Layout, node string, nodeIPs []netip.Addr) (blk IPBlock, created bool, err error) {
	if err := l.Validate(); err != nil {
		return IPBlock{}, false, err
	}
	if node == "" {
		return IPBlock{}, false, errors.New("node name: missing")
	}
	subnet := l.Subnet.Masked().String()
	for attempt := 0; attempt < maxClaimAttempts; attempt++ {
		all, err := c.List(ctx)
		if err != nil {
			return IPBlock{}, false, err
		}
		var existing []ipam.Block
		var own *IPBlock
		for i, b := range all {
			if b.Spec.Subnet != subnet {
				continue
			}
			if b.Spec.Node == node && own == nil {
				own = &all[i] // lowest index first: List is sorted
				continue
			}
			if bb, err := b.Block(); err == nil {
				existing = append(existing, bb)
			}
			// A name taken by a block of another size must not be picked again.
			if b.Spec.Size != l.BlockSize {
				if same, err := l.Block(b.Spec.Index); err == nil {
					existing = append(existing, same)
				}
			}
		}
		if own != nil {
			if own.Annotations[ClaimAnnotation] == claimConfirmed {
				return *own, false, nil
			}
			// Its claim never finished: confirm it now or give it up.
			ok, err := c.confirm(ctx, own)
			if err != nil {
				return IPBlock{}, false, err
			}
			if ok {
				return *own, false, nil
			}
			if err := pause(ctx, attempt); err != nil {
				return IPBlock{}, false, err
			}
			continue
		}
		free, err := l.LowestFreeBlock(existing, nodeIPs)
		if err != nil {
			return IPBlock{}, false, fmt.Errorf("claim a block for node %s: %w", node, err)
		}
		nb := IPBlock{
			TypeMeta:   metav1.TypeMeta{Kind: Kind, APIVersion: APIVersion},
			ObjectMeta: metav1.ObjectMeta{Name: BlockName(l.Subnet, free.Index), Labels: nodeLabels(node)},
			Spec:       IPBlockSpec{Subnet: subnet, Index: free.Index, First: free.First.String(), Size: free.Size, Node: node},
		}
		obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&nb)
		if err != nil {
			return IPBlock{}, false, fmt.Errorf("encode IPBlock %s: %w", nb.Name, err)
		}
		got, err := c.res.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue // another node won this index: re-list and take the next
		}
		if err != nil {
			return IPBlock{}, false, fmt.Errorf("create IPBlock %s for node %s: %w", nb.Name, node, err)
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, &nb); err != nil {
			return IPBlock{}, false, fmt.Errorf("decode created IPBlock %s: %w", nb.Name, err)
		}
		ok, err := c.confirm(ctx, &nb)
		if err != nil {
			return IPBlock{}, false, err
		}
		if ok {
			return nb, true, nil
		}
		if err := pause(ctx, attempt); err != nil {
			return IPBlock{}, false, err
		}
	}
	return IPBlock{}, false, fmt.Errorf("claim a block for node %s: lost %d races in a row; too many nodes joining at once, retrying later", node, maxClaimAttempts)
}

// confirm lists the blocks again after b was created: when another block
// overlaps b, b is deleted (false); otherwise b is marked confirmed (true)
// and updated in place.
func (c *Client) confirm(ctx context.Context, b *IPBlock) (bool, error) {
	mine, err := b.Block()
	if err != nil {
		return false, err
	}
	all, err := c.List(ctx)
	if err != nil {
		return false, err
	}
	for _, o := range all {
		if o.Name == b.Name || o.Spec.Subnet != b.Spec.Subnet {
			continue
		}
		if ob, err := o.Block(); err == nil && ob.Overlaps(mine) {
			err := c.res.Delete(ctx, b.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &b.UID}})
			if err != nil && !apierrors.IsNotFound(err) {
				return false, fmt.Errorf("give up IPBlock %s (%s), which overlaps %s of node %s: %w", b.Name, mine, o.Name, o.Spec.Node, err)
			}
			return false, nil
		}
	}
	for attempt := 0; ; attempt++ {
		cur, err := c.res.Get(ctx, b.Name, metav1.GetOptions{})
		if err != nil {
			return false, fmt.Errorf("get IPBlock %s to confirm it: %w", b.Name, err)
		}
		if cur.GetUID() != b.UID {
			return false, fmt.Errorf("confirm IPBlock %s: it was deleted and claimed again meanwhile", b.Name)
		}
		ann := cur.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann[ClaimAnnotation] = claimConfirmed
		cur.SetAnnotations(ann)
		got, err := c.res.Update(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue // a status update came between: read it again
		}
		if err != nil {
			return false, fmt.Errorf("confirm IPBlock %s: %w", b.Name, err)
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, b); err != nil {
			return false, fmt.Errorf("decode confirmed IPBlock %s: %w", b.Name, err)
		}
		return true, nil
	}
}

// pause waits a random while, longer with each attempt, so that two nodes
// that both gave up overlapping blocks do not claim the same ones again.
func pause(ctx context.Context, attempt int) error {
	d := time.Duration(rand.Int64N(int64(10*time.Millisecond) * int64(min(attempt, 10)+1)))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// UpdateStatus replaces the status of the named block.
func (c *Client) UpdateStatus(ctx context.Context, name string, st IPBlockStatus) error {
	if st.UpdateTime == nil {
		now := metav1.NewTime(time.Now())
		st.UpdateTime = &now
	}
	stObj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&st)
	if err != nil {
		return fmt.Errorf("encode IPBlock %s status: %w", name, err)
	}
	for attempt := 0; ; attempt++ {
		cur, err := c.res.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get IPBlock %s: %w", name, err)
		}
		cur.Object["status"] = stObj
		_, err = c.res.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return fmt.Errorf("update IPBlock %s status: %w", name, err)
		}
		return nil
	}
}

// ReleaseNodeBlocks deletes every block owned by node, for a node removed
// for good; it returns the names deleted.
func (c *Client) ReleaseNodeBlocks(ctx context.Context, node string) ([]string, error) {
	all, err := c.List(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, b := range all {
		if b.Spec.Node != node {
			continue
		}
		if err := c.res.Delete(ctx, b.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return names, fmt.Errorf("delete IPBlock %s of node %s: %w", b.Name, node, err)
		}
		names = append(names, b.Name)
	}
	return names, nil
}

// nodeLabels labels a block with its node when the name is a valid label value.
func nodeLabels(node string) map[string]string {
	if len(validation.IsValidLabelValue(node)) > 0 {
		return nil
	}
	return map[string]string{"flatnet.io/node": node}
}
