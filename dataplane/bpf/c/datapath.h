// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Map layouts of the flatnet datapath. Only dataplane/bpf reads these (through the
// Go types bpf2go generates from them); everyone else uses its typed accessors.
#pragma once

#define MAX_ENDPOINTS 4096
#define IPCACHE_MAX 262144
#define CIDRCACHE_MAX 65536
#define POLICY_MAX 131072
#define CT_MAX 262144 // shared table of new and closing connections (--ct-entries)
#define CT_EST_MAX 8192 // an endpoint's table of established ones (--ct-established-per-endpoint)
#define COUNTERS_MAX 65536
#define IDENTITIES_MAX 262144
#define EVENTS_RING_BYTES (1 << 20)
#define EVENTS_WAKEUP_BYTES (EVENTS_RING_BYTES / 8) // wake the reader from this fill on
#define DEFAULT_EVENTS_PER_SEC 2000

#define DIR_INGRESS 0 // into the pod
#define DIR_EGRESS 1  // out of the pod

#define IDENTITY_ANY 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2

// Set by from_pod on packets to a Service address, for the netfilter program.
#define SERVICE_MARK 0x00100000
// Set by from_pod on packets it hands straight to a local pod's veth (direct local
// delivery), so that to_pod marks the connection it opens as delivered that way.
#define DIRECT_MARK 0x00200000

// Verdict codes in counters and events. Drops use Cilium's drop reason numbers where
// Cilium has one (133 policy denied, 181 deny rule, 132 invalid source IP, ...).
#define FORWARD_POLICY 1      // new connection allowed by policy
#define FORWARD_ESTABLISHED 2 // packet of a tracked connection, in its opening direction
#define FORWARD_REPLY 3       // reply of a tracked connection
#define FORWARD_HOST 4        // to/from the pod's own node
#define FORWARD_ARP 5         // an Ethernet/IPv4 ARP request or reply (from a pod: about itself)
#define FORWARD_SERVICE 6     // to a Service address: egress judged after DNAT
#define FORWARD_SERVICE_BACKEND 7 // after DNAT: the backend is allowed
#define FORWARD_RELATED 8     // an ICMP error about a tracked connection
#define DROP_MALFORMED 134    // Cilium: invalid packet (short headers)
#define DROP_INVALID_SRC_MAC 130 // Cilium: invalid source mac (ARP not from the pod's MAC)
#define DROP_INVALID_SOURCE 132  // Cilium: invalid source ip (also an ARP claiming another address)
#define DROP_UNKNOWN_L3 139      // Cilium: unsupported L3 protocol (IPv6, unknown ethertypes)
#define DROP_UNSUPPORTED_L2 166  // Cilium: unsupported L2 protocol (VLAN tags, 802.3 frames)
#define DROP_FRAG_NOT_FOUND 175  // Cilium: first logical datagram fragment not found
#define DROP_POLICY 133
#define DROP_POLICY_DENY 181
#define DROP_UNROUTABLE 151  // Cilium: unroutable; a pod's packet to 127/8 or 0/8 (martians)
#define DROP_NO_ENDPOINT 190 // flatnet: program attached to an unknown interface
#define DROP_NO_POLICY 191   // flatnet: endpoint without a policy map

#define VERDICT_FORWARD 1
#define VERDICT_DROP 2

#define IPCACHE_F_SERVICE 1

#define CT_F_SEEN_REPLY 1
#define CT_F_CLOSING 2
#define CT_F_DIRECT 4 // opened by a packet delivered directly: no NAT on its path

#define CT_LIFETIME_SYN_NS (60ULL * 1000000000ULL)
#define CT_LIFETIME_TCP_NS (21600ULL * 1000000000ULL)
#define CT_LIFETIME_CLOSE_NS (10ULL * 1000000000ULL)
#define CT_LIFETIME_NONTCP_NS (60ULL * 1000000000ULL)

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

struct identity_sum {
	__u8 sum[32]; // sha256 of the label set's canonical form
};

struct endpoint_info {
	__u32 addr; // pod IPv4, network order
	__u32 identity;
	__u32 flags;
	__u32 pad;
};

// A pod of this node, by address (fn_local_ips), for direct local delivery.
struct local_ep {
	__u32 ifindex;      // host veth
	__u8 pod_mac[6];    // the pod's interface; zero: not known, deliver through the host veth
	__u8 host_mac[6];   // the host veth's (the pod's gateway)
};

struct ipcache_key {
	__u32 prefixlen;
	__u32 addr; // network order
};

struct ipcache_val {
	__u32 identity;
	__u32 flags;
};

// Policy hash key. A lookup probes, per remote identity, the port prefix lengths the
// endpoint's policy uses (longest first), then the any-protocol entry: a bounded
// number of hash lookups whatever the number of rules.
struct policy_key {
	__u8 dir;
	__u8 proto;    // 0 = any protocol (then dport and plen are 0)
	__u8 plen;     // port prefix length, 0..16
	__u8 pad;
	__u32 identity; // POLICY_META_IDENTITY for the per-direction meta entry
	__u16 dport;   // network order, masked to plen bits
	__u16 pad2;
};
#define POLICY_META_IDENTITY 0xffffffff
// Cilium's CIDR selectors never select pods or nodes; NetworkPolicy ipBlocks do. An
// endpoint with CiliumNetworkPolicy CIDR rules (meta world_cidr set) has, per prefix
// identity, a second key space with this bit set holding those rules merged with the
// ipBlock ones; it is looked up instead of the plain one for world remotes.
#define POLICY_WORLD_CIDR_BIT 0x80000000

struct policy_val {
	__u32 rule_id;
	__u8 deny;
	__u8 default_allow; // meta entry: the direction is not enforced
	__u8 world_cidr;    // meta entry: world-only CIDR entries exist (POLICY_WORLD_CIDR_BIT)
	__u8 pad;
	__u32 lens;         // meta entry: bit n set = some entry has port prefix length n
};

// IPv4 fragments: the first fragment's ports, for the fragments after it (which
// carry none), keyed by the datagram (as Cilium's IPv4 fragment map) and the
// endpoint's interface, so that one pod's fragments never name another's ports.
#define FRAGS_MAX 8192
struct frag_key {
	__u32 ifindex;
	__u32 saddr; // network order
	__u32 daddr;
	__u16 id;    // IP identification, network order
	__u8 proto;
	__u8 pad;
};

struct frag_ports {
	__u16 sport; // host order, as struct pkt
	__u16 dport;
};

// Connection tracking keys from the pod's side, in two tables: new and closing
// connections in one LRU shared by all endpoints (fn_ct), established ones in the
// endpoint's own table (fn_ct_est) that nothing evicts.
struct ct_key {
	__u32 ifindex;
	__u32 pod_addr;
	__u32 peer_addr;
	__u16 pod_port;
	__u16 peer_port;
	__u8 proto;
	__u8 pad[3];
};

struct ct_val {
	__u64 expires_ns; // CLOCK_MONOTONIC (the programs read its coarse variant)
	__u32 rule_id;
	__u8 origin_dir;
	__u8 flags;
	__u16 policy_rev; // fn_policy_rev when policy last allowed its opening direction; 0: judge again
};

struct counter_key {
	__u32 ifindex;
	__u8 dir;
	__u8 code;
	__u16 pad;
};

struct counter_val {
	__u64 packets;
	__u64 bytes;
};

struct event_budget {
	__u64 tokens_milli;
	__u64 last_ns;
	__u64 lost;
};

// The revision of everything a policy verdict reads (policy maps, IP and CIDR
// caches): the agent bumps it after each write, never to 0, and clears what
// connections hold of a range before it comes round again (revision.go).
struct policy_rev {
	__u32 rev;
	__u32 pad;
};

struct dp_config {
	__u32 events_per_sec; // per CPU; 0 = DEFAULT_EVENTS_PER_SEC
	__u32 flags;          // DP_F_*
};
#define DP_F_NO_EVENTS 1 // emit no flow event and count none lost (benchmarks measure their cost)
#define DP_F_HOST_ROUTING 2 // route pod-to-local-pod traffic through the host stack (Cilium's legacy host routing)

struct flow_event {
	__u64 ts_ns;
	__u32 ifindex;
	__u32 saddr; // network order
	__u32 daddr;
	__u16 sport; // host order
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u8 dir;
	__u8 verdict;
	__u8 code;
	__u8 pad;
	__u16 pad2;
	__u32 rule_id;
	__u32 remote_identity;
	__u32 local_identity;
	__u32 cpu;         // the CPU that wrote it: lost_before counts per CPU
	__u64 lost_before; // events this CPU had lost when this one was written
};
