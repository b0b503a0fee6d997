// Package ipam carves the node subnet into per-node address blocks, the
// way Azure CNI's node-subnet mode pre-assigns a batch of the VNet subnet's
// addresses to each node.
//
// # Three layers
//
//   - This package: pure block math. A Layout is the node subnet (the kind
//     docker network, 10.224.0.0/16), its reserved addresses (network and
//     broadcast, Docker's gateway 10.224.0.1, Docker's --ip-range
//     10.224.0.0/27 where the node containers live, and any node IP found
//     elsewhere) and a block size N (default 30, valid 10..250). Block i is the
//     N consecutive addresses starting at Origin()+i*N, where Origin is the
//     first address after the reserved run at the start of the subnet
//     (10.224.0.32 on kind). LowestFreeBlock picks the lowest index whose range
//     overlaps neither an existing block nor a reserved address.
//   - Package cluster: the cluster-wide record of who owns which block, one
//     cluster-scoped IPBlock object (flatnet.io/v1alpha1) per block. Its CRD
//     manifest is dataplane/manifests/crds/flatnet.io_ipblocks.yaml.
//   - Package nodealloc: the node-local allocator the CNI plugin uses, a
//     crash-safe file under /var/lib/flatnet/ipam handing out the addresses of
//     the node's block to pod attachments.
//
// # Why one object per block
//
// Blocks are named <subnet>-<index> (10-224-0-0-16-3). Claiming a block is a
// Create of that name, and the API server refuses a second object of the same
// name with AlreadyExists: with one block size, name uniqueness is the lock.
// Nodes with different maxPods have different block sizes, though, and
// overlapping blocks of different sizes have different indexes and names, so
// both Creates succeed. A claim therefore lists again after its Create: a
// claimer that sees another block overlapping its new one deletes its own and
// retries after a random pause. Of two overlapping blocks, the one created
// second always sees the first (a List is a quorum read and returns every
// object created before it), so at most one survives; then it is annotated
// flatnet.io/claim=confirmed. A block found unconfirmed (its claimer stopped
// between Create and the mark) is checked the same way before it is used.
// There is no leader election, no read-modify-write of a shared list and no
// lost update. One small object per block also keeps each node's updates
// (status.allocated) away from the others'. TestConcurrentNodesOfDifferentSizesNeverOverlap
// holds every Create back until all claimers have listed, the widest window,
// on client-go's object tracker and on a real kube-apiserver (envtest); the
// ipam suite repeats it on kind.
//
// # Keeping the same block
//
// EnsureNodeBlock first looks for blocks whose spec.node is this node and
// returns the lowest one; only a node that owns none claims a new one. So an
// agent restart, and a node deleted and re-created under the same name (kind
// node names are stable), get back the block their pods' addresses and the
// node-local allocator's file still refer to. Blocks are released explicitly
// (ReleaseNodeBlocks) by whoever knows the node is gone for good; they carry no
// ownerReference to the Node, because a Node object deleted and re-registered
// would then lose a block its running pods still use.
//
// # maxPods
//
// A node can host at most N pods with addresses of its own block, so the
// kubelet's maxPods must not exceed the block size: the scheduler then never
// places an (N+1)th pod there, and the allocator's exhaustion error is a
// safety net naming the node, the block size and the blockSize setting to
// raise. The cluster config sets maxPods (kind's KubeletConfiguration patch);
// the agent sizes its block from the Node's status.capacity.pods (or its
// --block-size flag) and reports a disagreement as a Warning event on the
// Node, a log line and the flatnet_block_maxpods_mismatch metric. Host-network
// pods take no address and count against maxPods too,
// which errs on the safe side. As with Azure, a subnet must hold
// (nodes + surge) blocks of N addresses plus the reserved ones.
package ipam
