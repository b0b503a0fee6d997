// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// flatnet policy datapath: programs on each pod's host-side veth (tcx).
//   tcx ingress of the host veth = traffic leaving the pod  (DIR_EGRESS)
//   tcx egress  of the host veth = traffic entering the pod (DIR_INGRESS)
// Every lookup is a hash or LPM lookup with a bounded key: the cost per packet does
// not depend on the number of rules.

#include <uapi.h>
#include <bpf_helpers.h>
#include <bpf_endian.h>

#include "datapath.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// tcx verdicts (uapi since 6.6; spelled out for older headers).
#define TCX_NEXT -1
#define TCX_DROP 2

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32); // host veth ifindex
	__type(value, struct endpoint_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_endpoints SEC(".maps");

// The node's own pods by address, for direct local delivery (deliver_local).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32); // pod IPv4, network order
	__type(value, struct local_ep);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_local_ips SEC(".maps");

// Tail calls: slot 0 is deliver_to_pod (filled by the agent at load).
#define CALL_DELIVER 0
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, IPCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CIDRCACHE_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_cidrcache SEC(".maps");

struct policy_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, POLICY_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct policy_key);
	__type(value, struct policy_val);
} fn_policy_proto SEC(".maps"); // an instance, so BTF carries the key and value in full

// One policy map per endpoint, swapped whole so an endpoint never runs half a policy.
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32); // host veth ifindex
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct policy_inner);
} fn_policy SEC(".maps");

// Not read by the programs: the agent's identity numbers (label-set sum -> identity),
// pinned with the maps that use them so a restarted agent allocates the same numbers.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, IDENTITIES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct identity_sum);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_identities SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, CT_MAX);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_ct SEC(".maps");

// Established connections (a reply seen, not closing), one table per endpoint: what
// the shared LRU above would evict under another pod's flood of new connections, and
// what policy replies depend on. Plain hash maps: an entry leaves when its lifetime
// has passed (the agent's GC, or a lookup that finds it expired), when its connection
// closes (back to fn_ct) or with its endpoint, never to make room. A full table keeps
// further connections of its endpoint in fn_ct.
struct ct_est_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CT_EST_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
} fn_ct_est_proto SEC(".maps"); // an instance, so BTF carries the key and value in full

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32); // host veth ifindex
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct ct_est_inner);
} fn_ct_est SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FRAGS_MAX);
	__type(key, struct frag_key);
	__type(value, struct frag_ports);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, COUNTERS_MAX);
	__type(key, struct counter_key);
	__type(value, struct counter_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EVENTS_RING_BYTES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_events SEC(".maps");

// Per-CPU token bucket for flow events and the count of events it (or a full ring)
// dropped: a flood costs the agent at most rate x CPUs events per second.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_budget);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_event_budget SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_config SEC(".maps");

// The first bytes of an ICMP header (linux/icmp.h drags in libc headers): echo
// request/reply carry id and seq; errors carry 4 unused (or MTU) bytes, then the
// offending packet's IP header and its first 8 bytes.
struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 seq;
};
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

// Ethertypes besides IPv4.
#define ETHERTYPE_ARP 0x0806
#define ETHERTYPE_8021Q 0x8100
#define ETHERTYPE_8021AD 0x88a8
#define ETHERTYPE_QINQ_OLD 0x9100
#define ETHERTYPE_MIN 0x0600 // below: an 802.3 length field

// The Ethernet/IPv4 ARP packet (linux/if_arp.h stops at the fixed part).
struct arp_eth_ipv4 {
	__u16 htype;
	__u16 ptype;
	__u8 hlen;
	__u8 plen;
	__u16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

// Types only reached through pointers: these make BTF (and bpf2go) carry them whole.
const struct flow_event *unused_flow_event __attribute__((unused));
const struct policy_key *unused_policy_key __attribute__((unused));
const struct policy_val *unused_policy_val __attribute__((unused));

// Ethernet + IPv4 with options + ICMP error header + embedded IPv4 with options + 8
// bytes: all parse() reads (more than a TCP header without options).
#define MAX_HEADERS (14 + 60 + 8 + 60 + 8)

struct pkt {
	__u32 saddr, daddr;
	__u16 sport, dport; // host order
	__u8 proto;
	__u8 tcp_flags;
	__u16 len;
	__u8 frag; // a fragment (first or not)
	// An ICMP error (related set): the tuple of the packet it reports, as embedded.
	__u8 related;
	__u8 rel_proto;
	__u32 rel_saddr, rel_daddr;
	__u16 rel_sport, rel_dport;
};

static __always_inline void count(__u32 ifindex, __u8 dir, __u8 code, __u32 bytes)
{
	struct counter_key k = {.ifindex = ifindex, .dir = dir, .code = code};
	struct counter_val *v = bpf_map_lookup_elem(&fn_counters, &k);
	if (v) {
		v->packets++;
		v->bytes += bytes;
		return;
	}
	struct counter_val nv = {.packets = 1, .bytes = bytes};
	bpf_map_update_elem(&fn_counters, &k, &nv, BPF_NOEXIST);
}

static __always_inline void emit(__u32 ifindex, __u8 dir, const struct pkt *p, __u8 verdict, __u8 code,
				 __u32 rule_id, __u32 remote_id, __u32 local_id)
{
	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&fn_event_budget, &zero);
	struct dp_config *cfg = bpf_map_lookup_elem(&fn_config, &zero);
	if (!b || !cfg || cfg->flags & DP_F_NO_EVENTS)
		return;
	__u64 now = bpf_ktime_get_ns();
	__u64 rate = cfg->events_per_sec ? cfg->events_per_sec : DEFAULT_EVENTS_PER_SEC;
	__u64 burst = rate; // one second's worth
	// Refill: rate tokens per second, capped at burst.
	__u64 elapsed = now - b->last_ns;
	if (elapsed > 1000000000ULL)
		elapsed = 1000000000ULL;
	__u64 tokens = b->tokens_milli + elapsed * rate / 1000000ULL; // milli-tokens
	if (tokens > burst * 1000)
		tokens = burst * 1000;
	b->last_ns = now;
	if (tokens < 1000) {
		b->tokens_milli = tokens;
		b->lost++;
		return;
	}
	b->tokens_milli = tokens - 1000;
	struct flow_event *e = bpf_ringbuf_reserve(&fn_events, sizeof(*e), 0);
	if (!e) {
		b->lost++;
		return;
	}
	e->ts_ns = now;
	e->ifindex = ifindex;
	e->saddr = p->saddr;
	e->daddr = p->daddr;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->tcp_flags = p->tcp_flags;
	e->dir = dir;
	e->verdict = verdict;
	e->code = code;
	e->pad = 0;
	e->pad2 = 0;
	e->pad3 = 0;
	e->rule_id = rule_id;
	e->remote_identity = remote_id;
	e->local_identity = local_id;
	e->lost_before = b->lost;
	// Waking the reader for every event costs the packet path more than writing it
	// (an irq_work per event): the reader polls (flowPoll in flows.go) instead, and
	// is woken only when the ring fills up.
	__u64 wake = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&fn_events, BPF_RB_AVAIL_DATA) >= EVENTS_WAKEUP_BYTES)
		wake = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, wake);
}

// l4_ports reads the ports (for ICMP echo: the id, see below) of a packet of proto
// whose L4 header starts at l4; returns 0, or -1 when the header is cut short.
static __always_inline int l4_ports(void *l4, void *end, __u8 proto, __u16 *sport, __u16 *dport)
{
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: { // TCP's and SCTP's headers start with the same two ports
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		*sport = bpf_ntohs(uh->source);
		*dport = bpf_ntohs(uh->dest);
		break;
	}
	case IPPROTO_ICMP: {
		struct icmp_echo *ih = l4;
		if ((void *)(ih + 1) > end)
			return -1;
		// Echo request/reply are tracked as a flow keyed by the echo id: the request
		// carries it as source "port", the reply as destination, so a reply matches
		// its request's connection and a request from the peer does not.
		if (ih->type == ICMP_ECHO)
			*sport = bpf_ntohs(ih->id);
		else if (ih->type == ICMP_ECHOREPLY)
			*dport = bpf_ntohs(ih->id);
		break;
	}
	}
	return 0;
}

// icmp_error fills p's related tuple from the packet an ICMP error (destination
// unreachable, time exceeded, parameter problem) embeds: its IP header and first
// 8 bytes. An embedded non-first fragment names no ports, and an error about an
// ICMP message other than an echo relates to nothing: no related tuple then.
static __always_inline int icmp_error(void *l4, void *end, struct pkt *p)
{
	struct iphdr *in = l4 + sizeof(struct icmp_echo);
	if ((void *)(in + 1) > end)
		return -1;
	if (in->ihl < 5 || in->version != 4 || (in->frag_off & bpf_htons(0x1fff)))
		return 0;
	void *inl4 = (void *)in + in->ihl * 4;
	if (in->protocol == IPPROTO_ICMP) {
		struct icmp_echo *ie = inl4;
		if ((void *)(ie + 1) > end)
			return -1;
		if (ie->type != ICMP_ECHO && ie->type != ICMP_ECHOREPLY)
			return 0;
	}
	__u16 sport = 0, dport = 0;
	if (l4_ports(inl4, end, in->protocol, &sport, &dport))
		return -1;
	p->related = 1;
	p->rel_proto = in->protocol;
	p->rel_saddr = in->saddr;
	p->rel_daddr = in->daddr;
	p->rel_sport = sport;
	p->rel_dport = dport;
	return 0;
}

// parse fills p from an Ethernet frame of the endpoint on ifindex. Returns 0 for
// IPv4, PARSE_ARP for an Ethernet/IPv4 ARP request or reply (p's addresses: sender
// and target), -1 when headers are cut short or malformed, else the drop code of a
// frame no pod sends or receives: flatnet is IPv4-only, and a VLAN tag (in the frame
// or already in skb metadata) would let the stack see an IPv4 packet this program
// did not (a priority-tagged frame is untagged and delivered as plain IPv4).
#define PARSE_ARP 1
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p, __u32 ifindex)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	__u16 proto = bpf_ntohs(eth->h_proto);
	if (skb->vlan_present || proto < ETHERTYPE_MIN || proto == ETHERTYPE_8021Q || proto == ETHERTYPE_8021AD ||
	    proto == ETHERTYPE_QINQ_OLD)
		return DROP_UNSUPPORTED_L2;
	if (proto == ETHERTYPE_ARP) {
		struct arp_eth_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > end)
			return -1;
		if (arp->htype != bpf_htons(1) || arp->ptype != bpf_htons(ETH_P_IP) || arp->hlen != 6 ||
		    arp->plen != 4 || (arp->op != bpf_htons(1) && arp->op != bpf_htons(2)))
			return -1;
		__builtin_memcpy(&p->saddr, arp->spa, 4);
		__builtin_memcpy(&p->daddr, arp->tpa, 4);
		return PARSE_ARP;
	}
	if (proto != ETH_P_IP)
		return DROP_UNKNOWN_L3;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5 || ip->version != 4)
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->len = bpf_ntohs(ip->tot_len);
	p->sport = p->dport = 0;
	p->tcp_flags = 0;
	p->related = 0;
	p->frag = (ip->frag_off & bpf_htons(0x3fff)) != 0; // MF or an offset
	struct frag_key fk = {.ifindex = ifindex, .saddr = ip->saddr, .daddr = ip->daddr, .id = ip->id,
			      .proto = ip->protocol};
	if (ip->frag_off & bpf_htons(0x1fff)) {
		// Not the first fragment: no L4 header. It takes the first one's ports (a
		// datagram whose first fragment was never seen here cannot be judged).
		struct frag_ports *fp = bpf_map_lookup_elem(&fn_frags, &fk);
		if (!fp)
			return DROP_FRAG_NOT_FOUND;
		p->sport = fp->sport;
		p->dport = fp->dport;
		return 0;
	}
	void *l4 = (void *)ip + ip->ihl * 4;
	if (l4_ports(l4, end, ip->protocol, &p->sport, &p->dport))
		return -1;
	if (ip->protocol == IPPROTO_TCP) {
		if (l4 + sizeof(struct tcphdr) > end)
			return -1;
		p->tcp_flags = ((__u8 *)l4)[13];
	} else if (ip->protocol == IPPROTO_ICMP) {
		__u8 type = ((struct icmp_echo *)l4)->type; // l4_ports checked the length
		if (type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED || type == ICMP_PARAMETERPROB) {
			if (icmp_error(l4, end, p))
				return -1;
		}
	}
	if (p->frag) {
		// The first fragment: its ports for the rest of the datagram.
		struct frag_ports fp = {.sport = p->sport, .dport = p->dport};
		bpf_map_update_elem(&fn_frags, &fk, &fp, BPF_ANY);
	}
	return 0;
}

static __always_inline __u64 ct_lifetime(const struct pkt *p, __u8 flags)
{
	if (p->proto != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP_NS;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_CLOSE_NS;
	if (!(flags & CT_F_SEEN_REPLY))
		return CT_LIFETIME_SYN_NS;
	return CT_LIFETIME_TCP_NS;
}

// lookup_one returns the entry of the longest port prefix for one remote identity,
// else its any-protocol entry, else NULL.
static __always_inline struct policy_val *lookup_one(void *pol, __u8 dir, __u32 id, __u8 proto, __u16 port,
						     __u32 lens)
{
	struct policy_key k = {.dir = dir, .proto = proto, .identity = id};
	struct policy_val *v;
	for (int l = 16; l >= 0; l--) {
		if (!(lens & (1U << l)))
			continue;
		k.plen = l;
		k.dport = bpf_htons(l == 0 ? 0 : port & (__u16)(0xffff << (16 - l)));
		v = bpf_map_lookup_elem(pol, &k);
		if (v)
			return v;
	}
	k.proto = 0;
	k.plen = 0;
	k.dport = 0;
	return bpf_map_lookup_elem(pol, &k);
}

struct decision {
	__u8 allow;
	__u8 code;
	__u32 rule_id;
};

// decide applies the precedence of the compiler's contract: a deny from any of the
// three identities' lookups wins, else an allow from any of them, else the
// direction's default (deny when enforced).
static __always_inline void decide(void *pol, __u8 dir, __u32 remote_id, __u32 cidr_id, const struct pkt *p,
				   struct decision *d)
{
	struct policy_key mk = {.dir = dir, .identity = POLICY_META_IDENTITY};
	struct policy_val *meta = bpf_map_lookup_elem(pol, &mk);
	__u32 lens = meta ? meta->lens : 0;
	struct policy_val *a = lookup_one(pol, dir, remote_id, p->proto, p->dport, lens);
	// A remote outside the cluster also meets the world-only CIDR entries (merged
	// with the plain ones by the compiler), when the endpoint has any.
	if (cidr_id && remote_id == IDENTITY_WORLD && meta && meta->world_cidr)
		cidr_id |= POLICY_WORLD_CIDR_BIT;
	struct policy_val *b = cidr_id ? lookup_one(pol, dir, cidr_id, p->proto, p->dport, lens) : NULL;
	struct policy_val *c = lookup_one(pol, dir, IDENTITY_ANY, p->proto, p->dport, lens);
	struct policy_val *allow = NULL;
	d->allow = 0;
	d->code = DROP_POLICY;
	d->rule_id = 0;
	if (a) {
		if (a->deny)
			goto deny_a;
		allow = a;
	}
	if (b) {
		if (b->deny) {
			a = b;
			goto deny_a;
		}
		if (!allow)
			allow = b;
	}
	if (c) {
		if (c->deny) {
			a = c;
			goto deny_a;
		}
		if (!allow)
			allow = c;
	}
	if (allow) {
		d->allow = 1;
		d->code = FORWARD_POLICY;
		d->rule_id = allow->rule_id;
	} else if (meta && meta->default_allow) {
		d->allow = 1;
		d->code = FORWARD_POLICY;
	}
	return;
deny_a:
	d->code = DROP_POLICY_DENY;
	d->rule_id = a->rule_id;
}

static __always_inline __u32 lookup_ip(void *map, __u32 addr, __u32 *flags)
{
	struct ipcache_key k = {.prefixlen = 32, .addr = addr};
	struct ipcache_val *v = bpf_map_lookup_elem(map, &k);
	if (!v)
		return 0;
	if (flags)
		*flags = v->flags;
	return v->identity;
}

// ---- Direct local delivery (Cilium's "BPF host routing", for pods of one node) ----
//
// A packet from a pod to another pod of the same node is handed by from_pod straight
// to the destination's host veth with bpf_redirect_neigh, skipping the host stack's
// IP input, netfilter and forwarding; to_pod still runs on the way out and judges the
// destination's ingress. Only traffic no NAT applies to may skip netfilter: a new
// connection qualifies when it is addressed to a local pod (kube-proxy and hostPort
// DNAT only Service and node addresses) and starts as a connection does (a TCP SYN,
// or UDP), unfragmented; its conntrack entries on both pods carry CT_F_DIRECT, and
// only packets of such connections are delivered directly. Everything else, replies
// of Service connections that netfilter must un-DNAT among them, takes the stack.

static __always_inline int host_routing(void)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&fn_config, &zero);
	return cfg && (cfg->flags & DP_F_HOST_ROUTING);
}

// ipv4 is the packet's IPv4 header (parse has checked the frame is IPv4), or NULL.
static __always_inline struct iphdr *ipv4(struct __sk_buff *skb)
{
	struct iphdr *ip = (void *)(long)skb->data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > (void *)(long)skb->data_end)
		return NULL;
	return ip;
}

// local_target returns the local pod p goes to when p may be delivered directly,
// else NULL.
static __always_inline struct local_ep *local_target(struct __sk_buff *skb, const struct pkt *p)
{
	if (p->frag || (p->proto != IPPROTO_TCP && p->proto != IPPROTO_UDP) || host_routing())
		return NULL;
	__u32 daddr = p->daddr;
	struct local_ep *le = bpf_map_lookup_elem(&fn_local_ips, &daddr);
	if (!le)
		return NULL;
	// The stack answers an expiring packet with time exceeded: leave those to it.
	struct iphdr *ip = ipv4(skb);
	if (!ip || ip->ttl <= 1)
		return NULL;
	return le;
}

// The tail call's argument: the receiver's local_ep, in skb->cb[0..3].
union local_ep_cb {
	struct local_ep le;
	__u32 cb[4];
};

// deliver_local forwards the packet to a local pod as the stack would (TTL
// decremented), marked DIRECT_MARK. When the pod's MAC is known, straight into the
// pod (deliver_to_pod, a tail call: the receiver's ingress is judged there, and
// neither its host veth nor to_pod see the packet); else out of its host veth, L2
// addresses from the neighbour table, to_pod judging it there.
static __always_inline int deliver_local(struct __sk_buff *skb, const struct local_ep *le)
{
	struct iphdr *ip = ipv4(skb);
	if (!ip)
		return TCX_NEXT;
	// ip_decrease_ttl: TTL is the high byte of the checksummed 16-bit word.
	__u32 check = (__u32)ip->check + (__u32)bpf_htons(0x0100);
	ip->check = (__u16)(check + (check >= 0xffff));
	ip->ttl--;
	skb->mark |= DIRECT_MARK;
	if (le->pod_mac[0] | le->pod_mac[1] | le->pod_mac[2] | le->pod_mac[3] | le->pod_mac[4] | le->pod_mac[5]) {
		union local_ep_cb arg = {.le = *le};
		skb->cb[0] = arg.cb[0];
		skb->cb[1] = arg.cb[1];
		skb->cb[2] = arg.cb[2];
		skb->cb[3] = arg.cb[3];
		bpf_tail_call(skb, &fn_calls, CALL_DELIVER);
		// No program in the slot (an agent being replaced): the host veth way.
	}
	return bpf_redirect_neigh(le->ifindex, NULL, 0, 0);
}

#define CT_IN_SHARED 1
#define CT_IN_EST 2
// How stale a refreshed lifetime may be left, to save a write per packet.
#define CT_REFRESH_NS 1000000000ULL

// ct_get copies the connection of k into *v and says where it is: CT_IN_EST (the
// endpoint's table of established ones), CT_IN_SHARED, or 0 (not tracked). An
// expired established entry is deleted on the way, so that it never hides a newer
// entry of the tuple in the shared table. Global functions (ct_get, ct_set) are
// verified once, not once per path of handle(): the verifier's budget is tight.
__attribute__((noinline)) int ct_get(__u32 ifindex, const struct ct_key *k, __u64 now, struct ct_val *v)
{
	if (!k || !v)
		return 0;
	void *t = bpf_map_lookup_elem(&fn_ct_est, &ifindex);
	if (t) {
		struct ct_val *e = bpf_map_lookup_elem(t, k);
		if (e && e->expires_ns >= now) {
			*v = *e;
			return CT_IN_EST;
		}
		if (e)
			bpf_map_delete_elem(t, k);
	}
	struct ct_val *s = bpf_map_lookup_elem(&fn_ct, k);
	if (!s)
		return 0;
	*v = *s;
	return CT_IN_SHARED;
}

// ct_set stores a tracked connection's new state (nv; it was old, where ct_get
// found it). An established connection (a reply seen, not closing) moves into the
// endpoint's table, unless that is full (it then stays shared); a closing one moves
// back out, so closed connections take no room there.
__attribute__((noinline)) int ct_set(__u32 ifindex, const struct ct_key *k, int where, const struct ct_val *old,
				     const struct ct_val *nv)
{
	if (!k || !old || !nv)
		return 0;
	int est = (nv->flags & (CT_F_SEEN_REPLY | CT_F_CLOSING)) == CT_F_SEEN_REPLY;
	if (est == (where == CT_IN_EST) && nv->flags == old->flags && nv->expires_ns < old->expires_ns + CT_REFRESH_NS)
		return 0; // the common case: nothing worth a write
	void *t = bpf_map_lookup_elem(&fn_ct_est, &ifindex);
	struct ct_val *e;
	if (est == (where == CT_IN_EST)) {
		if (where == CT_IN_EST)
			e = t ? bpf_map_lookup_elem(t, k) : NULL;
		else
			e = bpf_map_lookup_elem(&fn_ct, k);
		if (e) {
			e->flags = nv->flags;
			e->expires_ns = nv->expires_ns;
		}
		return 0;
	}
	if (!t)
		return 0;
	if (est) {
		if (bpf_map_update_elem(t, k, nv, BPF_NOEXIST) == 0)
			bpf_map_delete_elem(&fn_ct, k);
		else
			bpf_map_update_elem(&fn_ct, k, nv, BPF_ANY);
	} else {
		bpf_map_update_elem(&fn_ct, k, nv, BPF_ANY);
		bpf_map_delete_elem(t, k);
	}
	return 0;
}

// pass_tracked lets a packet of a tracked connection through: the entry refreshed
// with flags, the packet counted under code, and, from a pod, delivered directly
// when the connection is. Into a pod, the entry's direct flag follows the way the
// packet came: a Service connection may reuse the tuple a direct one had (a UDP
// source port reused), and its replies must then go back through netfilter.
static __always_inline int pass_tracked(struct __sk_buff *skb, const struct ct_val *ct, int where,
					const struct ct_key *ck, __u8 flags, __u64 now, const struct pkt *p, __u32 ifindex,
					__u8 dir, __u8 code)
{
	if (dir == DIR_INGRESS)
		flags = (flags & ~CT_F_DIRECT) | (skb->mark & DIRECT_MARK ? CT_F_DIRECT : 0);
	struct ct_val nv = *ct;
	nv.flags = flags;
	nv.expires_ns = now + ct_lifetime(p, flags);
	ct_set(ifindex, ck, where, ct, &nv);
	count(ifindex, dir, code, skb->len);
	if (dir == DIR_EGRESS && (flags & CT_F_DIRECT)) {
		struct local_ep *le = local_target(skb, p);
		if (le)
			return deliver_local(skb, le);
	}
	return TCX_NEXT;
}

// endpoint_identity is the identity of the endpoint on ifindex, for events of packets
// that did not need the endpoint looked up (known: id, when it was).
static __always_inline __u32 endpoint_identity(__u32 ifindex, __u32 id)
{
	if (id)
		return id;
	struct endpoint_info *ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
	return ep ? ep->identity : 0;
}

// handle_arp judges an ARP request or reply (parse checked its format): into a pod
// any (the host resolves the pod's address); from a pod only about itself, its
// own address as sender and, when the CNI plugin reported the pod's MAC, that MAC
// as sender and Ethernet source: a pod may not claim another's address.
static __always_inline int handle_arp(struct __sk_buff *skb, __u8 dir, __u32 ifindex, const struct pkt *p)
{
	__u8 code = FORWARD_ARP;
	__u32 local_id = 0;
	if (dir == DIR_EGRESS) {
		struct endpoint_info *ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
		if (!ep) {
			code = DROP_NO_ENDPOINT;
			goto drop;
		}
		local_id = ep->identity;
		__u32 addr = ep->addr;
		if (p->saddr != addr) {
			code = DROP_INVALID_SOURCE;
			goto drop;
		}
		struct local_ep *le = bpf_map_lookup_elem(&fn_local_ips, &addr);
		struct ethhdr *eth = (void *)(long)skb->data;
		struct arp_eth_ipv4 *arp = (void *)(eth + 1);
		if ((void *)(arp + 1) > (void *)(long)skb->data_end)
			return TCX_DROP; // parse checked it
		if (le && (le->pod_mac[0] | le->pod_mac[1] | le->pod_mac[2] | le->pod_mac[3] | le->pod_mac[4] |
			   le->pod_mac[5])) {
			__u8 diff = 0;
			for (int i = 0; i < 6; i++)
				diff |= (eth->h_source[i] ^ le->pod_mac[i]) | (arp->sha[i] ^ le->pod_mac[i]);
			if (diff) {
				code = DROP_INVALID_SRC_MAC;
				goto drop;
			}
		}
	}
	count(ifindex, dir, code, skb->len);
	return TCX_NEXT;
drop:
	count(ifindex, dir, code, skb->len);
	emit(ifindex, dir, p, VERDICT_DROP, code, 0, 0, local_id);
	return TCX_DROP;
}

// related passes an ICMP error about a connection tracked for this endpoint, in
// either direction (as conntrack's RELATED): returns 1 when it did. The embedded
// packet went the other way: out of the pod when the error comes in, and back.
static __always_inline int related(struct __sk_buff *skb, const struct pkt *p, __u32 ifindex, __u8 dir, __u64 now)
{
	struct ct_key k = {.ifindex = ifindex, .proto = p->rel_proto};
	__u32 pod_side;
	if (dir == DIR_EGRESS) {
		k.pod_addr = p->rel_daddr;
		k.peer_addr = p->rel_saddr;
		k.pod_port = p->rel_dport;
		k.peer_port = p->rel_sport;
		pod_side = p->saddr;
	} else {
		k.pod_addr = p->rel_saddr;
		k.peer_addr = p->rel_daddr;
		k.pod_port = p->rel_sport;
		k.peer_port = p->rel_dport;
		pod_side = p->daddr;
	}
	// Entries are made only under the endpoint's own address: the error must be
	// from (to) that address too, which is the source check for it.
	if (pod_side != k.pod_addr)
		return 0;
	struct ct_val ctv;
	if (!ct_get(ifindex, &k, now, &ctv) || ctv.expires_ns < now)
		return 0;
	count(ifindex, dir, FORWARD_RELATED, skb->len);
	return 1;
}

// handle judges a packet of the endpoint on host veth ifindex going in direction dir,
// counts it, reports it, and returns the tcx verdict.
static __always_inline int handle(struct __sk_buff *skb, __u8 dir, __u32 ifindex)
{
	struct pkt p = {};
	int r = parse(skb, &p, ifindex);
	if (r < 0 && skb->len > skb->data_end - skb->data) {
		// Headers beyond the linear part of a non-linear skb: pull them in, retry.
		__u32 want = skb->len < MAX_HEADERS ? skb->len : MAX_HEADERS;
		if (!bpf_skb_pull_data(skb, want))
			r = parse(skb, &p, ifindex);
	}
	if (r == PARSE_ARP)
		return handle_arp(skb, dir, ifindex, &p);
	if (r != 0) {
		__u8 code = r < 0 ? DROP_MALFORMED : r;
		struct endpoint_info *ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
		if (ep && (code == DROP_UNKNOWN_L3 || code == DROP_UNSUPPORTED_L2)) {
			// No IPv4 addresses in the frame: the pod's own names it in the event.
			if (dir == DIR_EGRESS)
				p.saddr = ep->addr;
			else
				p.daddr = ep->addr;
		}
		count(ifindex, dir, code, skb->len);
		emit(ifindex, dir, &p, VERDICT_DROP, code, 0, 0, ep ? ep->identity : 0);
		return TCX_DROP;
	}
	__u64 now = bpf_ktime_get_ns();
	if (p.related && related(skb, &p, ifindex, dir, now))
		return TCX_NEXT;
	// Connection tracking: one entry per connection and endpoint, keyed from the pod's
	// side, remembering which direction opened it. Entries are only made with the
	// endpoint's own address as the pod's: a packet that matches one has a valid
	// source, and the endpoint lookup is left to packets that need it.
	struct ct_key ck = {.ifindex = ifindex, .proto = p.proto};
	if (dir == DIR_EGRESS) {
		ck.pod_addr = p.saddr;
		ck.peer_addr = p.daddr;
		ck.pod_port = p.sport;
		ck.peer_port = p.dport;
	} else {
		ck.pod_addr = p.daddr;
		ck.peer_addr = p.saddr;
		ck.pod_port = p.dport;
		ck.peer_port = p.sport;
	}
	struct ct_val ctv;
	int where = ct_get(ifindex, &ck, now, &ctv);
	struct ct_val *ct = where ? &ctv : NULL;
	if (ct && ct->expires_ns < now)
		ct = NULL;
	// A SYN on the tuple of a closing connection opens a new one (port reuse within
	// the closing lifetime): judge it afresh, in whichever direction it comes, and
	// never as a reply of the old one.
	if (ct && (ct->flags & CT_F_CLOSING) && p.proto == IPPROTO_TCP &&
	    (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		ct = NULL;
	__u8 closing = (p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) ? CT_F_CLOSING : 0;
	if (ct && ct->origin_dir != dir) {
		// A reply of a connection this endpoint's policy (or its peer) let through.
		return pass_tracked(skb, ct, where, &ck, ct->flags | CT_F_SEEN_REPLY | closing, now, &p, ifindex, dir,
				    FORWARD_REPLY);
	}

	struct endpoint_info *ep = NULL;
	__u32 local_id = 0;
	if (!ct) {
		ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
		if (!ep) {
			// Attached but not (or no longer) known: fail closed.
			count(ifindex, dir, DROP_NO_ENDPOINT, skb->len);
			emit(ifindex, dir, &p, VERDICT_DROP, DROP_NO_ENDPOINT, 0, 0, 0);
			return TCX_DROP;
		}
		local_id = ep->identity;
		if (dir == DIR_EGRESS && p.saddr != ep->addr) {
			count(ifindex, dir, DROP_INVALID_SOURCE, skb->len);
			emit(ifindex, dir, &p, VERDICT_DROP, DROP_INVALID_SOURCE, 0, 0, local_id);
			return TCX_DROP;
		}
		// The node's loopback (127/8) and 0/8 are no destination for a pod: with
		// route_localnet=1 (kube-proxy) the host answers them from its loopback-only
		// services (the agent's API) unless a firewall rule says otherwise.
		__u8 first = bpf_ntohl(p.daddr) >> 24;
		if (dir == DIR_EGRESS && (first == 127 || first == 0)) {
			count(ifindex, dir, DROP_UNROUTABLE, skb->len);
			emit(ifindex, dir, &p, VERDICT_DROP, DROP_UNROUTABLE, 0, 0, local_id);
			return TCX_DROP;
		}
	}

	__u32 peer_addr = ck.peer_addr;
	__u32 ipc_flags = 0;
	__u32 remote_id = lookup_ip(&fn_ipcache, peer_addr, &ipc_flags);
	if (!remote_id)
		remote_id = IDENTITY_WORLD;
	struct decision d = {};
	if (dir == DIR_EGRESS && (ipc_flags & IPCACHE_F_SERVICE || remote_id == IDENTITY_HOST)) {
		// A Service address (ClusterIP), or the node's own address (a NodePort):
		// kube-proxy may DNAT it after this hook, so the egress decision is made on
		// the backend by service_egress on FORWARD; mark the packet for it. Packets
		// the node keeps for itself never reach FORWARD and stay allowed. The
		// connection is tracked here under the address the pod used, which is what
		// the un-DNATed replies carry.
		skb->mark |= SERVICE_MARK;
		d.allow = 1;
		d.code = remote_id == IDENTITY_HOST ? FORWARD_HOST : FORWARD_SERVICE;
	} else if (remote_id == IDENTITY_HOST) {
		// Own node -> pod (kubelet probes) is always allowed.
		d.allow = 1;
		d.code = FORWARD_HOST;
	} else {
		void *pol = bpf_map_lookup_elem(&fn_policy, &ifindex);
		if (!pol) {
			count(ifindex, dir, DROP_NO_POLICY, skb->len);
			emit(ifindex, dir, &p, VERDICT_DROP, DROP_NO_POLICY, 0, remote_id, endpoint_identity(ifindex, local_id));
			return TCX_DROP;
		}
		__u32 cidr_id = lookup_ip(&fn_cidrcache, peer_addr, NULL);
		decide(pol, dir, remote_id, cidr_id, &p, &d);
	}
	if (!d.allow) {
		count(ifindex, dir, d.code, skb->len);
		emit(ifindex, dir, &p, VERDICT_DROP, d.code, d.rule_id, remote_id, endpoint_identity(ifindex, local_id));
		return TCX_DROP;
	}
	if (ct)
		return pass_tracked(skb, ct, where, &ck, ct->flags | closing, now, &p, ifindex, dir, FORWARD_ESTABLISHED);
	struct ct_val nv = {
		.origin_dir = dir,
		.flags = closing,
		.rule_id = d.rule_id,
	};
	struct local_ep *le = NULL;
	if (dir == DIR_EGRESS) {
		// Only the opening packet of a connection starts direct delivery: a lost
		// entry re-created mid-connection may belong to a NATed one.
		if (d.code == FORWARD_POLICY &&
		    (p.proto == IPPROTO_UDP || (p.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN))
			le = local_target(skb, &p);
		if (le)
			nv.flags |= CT_F_DIRECT;
	} else if (skb->mark & DIRECT_MARK) {
		nv.flags |= CT_F_DIRECT;
	}
	nv.expires_ns = now + ct_lifetime(&p, closing);
	// Only under the endpoint's own address (see above); a packet to another address
	// routed out of this veth passes untracked.
	if (ep && ck.pod_addr == ep->addr)
		bpf_map_update_elem(&fn_ct, &ck, &nv, BPF_ANY);
	count(ifindex, dir, d.code, skb->len);
	emit(ifindex, dir, &p, VERDICT_FORWARD, d.code, d.rule_id, remote_id, local_id);
	if (le)
		return deliver_local(skb, le);
	return TCX_NEXT;
}

SEC("tcx/ingress")
int from_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_EGRESS, skb->ifindex);
}

SEC("tcx/egress")
int to_pod(struct __sk_buff *skb)
{
	return handle(skb, DIR_INGRESS, skb->ifindex);
}

// deliver_to_pod, tail-called by from_pod (deliver_local) on the sender's host veth:
// judges the packet as the receiver's ingress, as to_pod would on the receiver's
// veth, and hands it straight to the receiver's interface (bpf_redirect_peer), with
// the L2 addresses it would have had through the host veth.
SEC("tcx/ingress")
int deliver_to_pod(struct __sk_buff *skb)
{
	union local_ep_cb arg = {.cb = {skb->cb[0], skb->cb[1], skb->cb[2], skb->cb[3]}};
	int r = handle(skb, DIR_INGRESS, arg.le.ifindex);
	if (r != TCX_NEXT)
		return r;
	struct ethhdr *eth = (void *)(long)skb->data;
	if ((void *)(eth + 1) > (void *)(long)skb->data_end)
		return TCX_DROP;
	__builtin_memcpy(eth->h_dest, arg.le.pod_mac, 6);
	__builtin_memcpy(eth->h_source, arg.le.host_mac, 6);
	skb->mark = 0; // as if it had crossed the veth (which scrubs it)
	return bpf_redirect_peer(arg.le.ifindex, 0);
}

// ---- Services: judged on the backend, after kube-proxy's DNAT ----
//
// from_pod cannot see which backend kube-proxy will pick: the DNAT happens later, in
// the host stack. It marks packets to Service addresses and lets them go; this
// netfilter program, on the FORWARD hook (after PREROUTING's DNAT, before
// POSTROUTING's masquerade), judges them against the pod's egress policy with the
// backend as destination. It also judges every other packet conntrack has DNATed
// (original direction): an address the agent does not know as a Service's (an
// externalIP, a LoadBalancer IP, a NodePort on a node address outside Node.status, a
// hostPort) never takes a pod past its egress policy, and a DNATed packet bound for a
// pod of this node is judged against that pod's ingress policy with the source it has
// before the masquerade, which to_pod would only see as the node. The kernel types
// below are the few fields read through CO-RE from the running kernel's BTF.

struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

struct nf_hook_state {
	struct net_device *in;
	struct net_device *out;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned char *head;
	__u16 network_header;
	__u32 mark;
	unsigned int len;
	unsigned long _nfct;
} __attribute__((preserve_access_index));

struct nf_conn {
	unsigned long status;
} __attribute__((preserve_access_index));

struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
} __attribute__((preserve_access_index));

#define NF_DROP 0
#define NF_ACCEPT 1
#define NFCT_INFOMASK 7UL
#define IP_CT_IS_REPLY 3 // ctinfo from here on: reply direction
#define IPS_DST_NAT (1UL << 5)

// dnated reports whether conntrack has DNATed the packet's connection and the packet
// goes in its original direction.
static __always_inline int dnated(const struct sk_buff *skb)
{
	unsigned long nfct = skb->_nfct;
	if (!(nfct & ~NFCT_INFOMASK) || (nfct & NFCT_INFOMASK) >= IP_CT_IS_REPLY)
		return 0;
	struct nf_conn *ct = (void *)(nfct & ~NFCT_INFOMASK);
	unsigned long status = 0;
	if (bpf_probe_read_kernel(&status, sizeof(status), &ct->status))
		return 0;
	return (status & IPS_DST_NAT) != 0;
}

// nf_judge decides a new-or-opening packet for the endpoint on ifindex in direction
// dir against remote addr; drops are counted and reported as from_pod/to_pod would.
static __always_inline int nf_judge(__u32 ifindex, __u8 dir, __u32 addr, __u32 local_id, const struct pkt *p)
{
	__u32 remote_id = lookup_ip(&fn_ipcache, addr, NULL);
	if (!remote_id)
		remote_id = IDENTITY_WORLD;
	if (remote_id == IDENTITY_HOST)
		return 1;
	struct decision d = {};
	void *pol = bpf_map_lookup_elem(&fn_policy, &ifindex);
	if (!pol) {
		d.code = DROP_NO_POLICY;
	} else {
		__u32 cidr_id = lookup_ip(&fn_cidrcache, addr, NULL);
		decide(pol, dir, remote_id, cidr_id, p, &d);
	}
	if (!d.allow) {
		count(ifindex, dir, d.code, p->len);
		emit(ifindex, dir, p, VERDICT_DROP, d.code, d.rule_id, remote_id, local_id);
	}
	return d.allow;
}

SEC("netfilter")
int service_egress(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	const struct nf_hook_state *state = ctx->state;
	if (!skb || !state)
		return NF_ACCEPT;
	int nat = dnated(skb);
	if (!nat && !(skb->mark & SERVICE_MARK))
		return NF_ACCEPT; // already judged by from_pod and to_pod
	__u32 in_if = state->in ? state->in->ifindex : 0;
	__u32 out_if = state->out ? state->out->ifindex : 0;
	struct endpoint_info *src_ep = bpf_map_lookup_elem(&fn_endpoints, &in_if);
	struct endpoint_info *dst_ep = nat ? bpf_map_lookup_elem(&fn_endpoints, &out_if) : NULL;
	if (!src_ep) {
		asm volatile("" : "+r"(dst_ep)); // two null checks, not one on or-ed pointers
		if (!dst_ep)
			return NF_ACCEPT; // neither from nor to a pod of this node
	}
	unsigned char *nh = skb->head + skb->network_header;
	struct iphdr ip;
	if (bpf_probe_read_kernel(&ip, sizeof(ip), nh) || ip.version != 4)
		return NF_DROP;
	struct pkt p = {
		.saddr = ip.saddr,
		.daddr = ip.daddr,
		.proto = ip.protocol,
		.len = bpf_ntohs(ip.tot_len),
	};
	if (!(ip.frag_off & bpf_htons(0x1fff)) &&
	    (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP || ip.protocol == IPPROTO_SCTP)) {
		__u16 ports[2];
		if (bpf_probe_read_kernel(ports, sizeof(ports), nh + ip.ihl * 4))
			return NF_DROP;
		p.sport = bpf_ntohs(ports[0]);
		p.dport = bpf_ntohs(ports[1]);
		if (ip.protocol == IPPROTO_TCP) {
			__u8 flags;
			if (!bpf_probe_read_kernel(&flags, 1, nh + ip.ihl * 4 + 13))
				p.tcp_flags = flags;
		}
	}
	// A pod reaching itself through its own Service (hairpin) is always allowed, as
	// between a pod and itself by address; kube-proxy masquerades the hairpin, so the
	// way back in is judged as from the host.
	if (p.daddr == p.saddr)
		return NF_ACCEPT;
	if (src_ep) {
		if (!nf_judge(in_if, DIR_EGRESS, p.daddr, src_ep->identity, &p))
			return NF_DROP;
		count(in_if, DIR_EGRESS, FORWARD_SERVICE_BACKEND, p.len);
	}
	// Allowed ones are counted by to_pod, which sees them next.
	if (dst_ep && dst_ep->addr == p.daddr && !nf_judge(out_if, DIR_INGRESS, p.saddr, dst_ep->identity, &p))
		return NF_DROP;
	return NF_ACCEPT;
}
