// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// flatnet policy datapath: programs on each pod's host-side veth (tcx).
//   tcx ingress of the host veth = traffic leaving the pod  (DIR_EGRESS)
//   tcx egress  of the host veth = traffic entering the pod (DIR_INGRESS)
// Every lookup is a hash or LPM lookup with a bounded key: the cost per packet does
// not depend on the number of rules.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

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

// The first bytes of an ICMP echo header (linux/icmp.h drags in libc headers).
struct icmp_echo {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u16 id;
	__u16 seq;
};
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

// Types only reached through pointers: these make BTF (and bpf2go) carry them whole.
const struct flow_event *unused_flow_event __attribute__((unused));
const struct policy_key *unused_policy_key __attribute__((unused));
const struct policy_val *unused_policy_val __attribute__((unused));

// Ethernet + IPv4 with options + TCP without options: all parse() reads.
#define MAX_HEADERS (14 + 60 + 20)

struct pkt {
	__u32 saddr, daddr;
	__u16 sport, dport; // host order
	__u8 proto;
	__u8 tcp_flags;
	__u16 len;
	__u8 frag; // a fragment (first or not)
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

// parse fills p from an Ethernet frame; returns 0 for IPv4, 1 to pass untouched, <0 to drop.
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 1;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return 1; // ARP; IPv6 is not routed for pods in this cluster
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->len = bpf_ntohs(ip->tot_len);
	p->sport = p->dport = 0;
	p->tcp_flags = 0;
	p->frag = (ip->frag_off & bpf_htons(0x3fff)) != 0; // MF or an offset
	// Non-first fragments carry no ports: they are judged as port 0.
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	void *l4 = (void *)ip + ip->ihl * 4;
	switch (ip->protocol) {
	case IPPROTO_TCP: {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return -1;
		p->sport = bpf_ntohs(th->source);
		p->dport = bpf_ntohs(th->dest);
		p->tcp_flags = ((__u8 *)th)[13];
		break;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: { // SCTP's common header starts with the same two ports
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return -1;
		p->sport = bpf_ntohs(uh->source);
		p->dport = bpf_ntohs(uh->dest);
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
			p->sport = bpf_ntohs(ih->id);
		else if (ih->type == ICMP_ECHOREPLY)
			p->dport = bpf_ntohs(ih->id);
		break;
	}
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

// pass_tracked lets a packet of a tracked connection through: the entry refreshed
// with flags, the packet counted under code, and, from a pod, delivered directly
// when the connection is. Into a pod, the entry's direct flag follows the way the
// packet came: a Service connection may reuse the tuple a direct one had (a UDP
// source port reused), and its replies must then go back through netfilter.
static __always_inline int pass_tracked(struct __sk_buff *skb, struct ct_val *ct, __u8 flags, __u64 now,
					const struct pkt *p, __u32 ifindex, __u8 dir, __u8 code)
{
	if (dir == DIR_INGRESS)
		flags = (flags & ~CT_F_DIRECT) | (skb->mark & DIRECT_MARK ? CT_F_DIRECT : 0);
	ct->flags = flags;
	ct->expires_ns = now + ct_lifetime(p, flags);
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

// handle judges a packet of the endpoint on host veth ifindex going in direction dir,
// counts it, reports it, and returns the tcx verdict.
static __always_inline int handle(struct __sk_buff *skb, __u8 dir, __u32 ifindex)
{
	struct pkt p;
	int r = parse(skb, &p);
	if (r < 0 && skb->len > skb->data_end - skb->data) {
		// Headers beyond the linear part of a non-linear skb: pull them in, retry.
		__u32 want = skb->len < MAX_HEADERS ? skb->len : MAX_HEADERS;
		if (!bpf_skb_pull_data(skb, want))
			r = parse(skb, &p);
	}
	if (r > 0) {
		count(ifindex, dir, FORWARD_NOT_IPV4, skb->len);
		return TCX_NEXT;
	}
	if (r < 0) {
		count(ifindex, dir, DROP_MALFORMED, skb->len);
		return TCX_DROP;
	}
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
	__u64 now = bpf_ktime_get_ns();
	struct ct_val *ct = bpf_map_lookup_elem(&fn_ct, &ck);
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
		return pass_tracked(skb, ct, ct->flags | CT_F_SEEN_REPLY | closing, now, &p, ifindex, dir, FORWARD_REPLY);
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
		return pass_tracked(skb, ct, ct->flags | closing, now, &p, ifindex, dir, FORWARD_ESTABLISHED);
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

// ---- Services: egress judged on the backend, after kube-proxy's DNAT ----
//
// from_pod cannot see which backend kube-proxy will pick: the DNAT happens later, in
// the host stack. It marks packets to Service addresses and lets them go; this
// netfilter program, on the FORWARD hook (after PREROUTING's DNAT), judges them
// against the pod's egress policy with the backend as destination. The kernel types
// below are the few fields read through CO-RE from the running kernel's BTF.

struct net_device {
	int ifindex;
} __attribute__((preserve_access_index));

struct nf_hook_state {
	struct net_device *in;
} __attribute__((preserve_access_index));

struct sk_buff {
	unsigned char *head;
	__u16 network_header;
	__u32 mark;
	unsigned int len;
} __attribute__((preserve_access_index));

struct bpf_nf_ctx {
	const struct nf_hook_state *state;
	struct sk_buff *skb;
} __attribute__((preserve_access_index));

#define NF_DROP 0
#define NF_ACCEPT 1

SEC("netfilter")
int service_egress(struct bpf_nf_ctx *ctx)
{
	struct sk_buff *skb = ctx->skb;
	const struct nf_hook_state *state = ctx->state;
	if (!skb || !state || !state->in)
		return NF_ACCEPT;
	if (!(skb->mark & SERVICE_MARK))
		return NF_ACCEPT; // already judged by from_pod
	__u32 ifindex = state->in->ifindex;
	struct endpoint_info *ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
	if (!ep)
		return NF_ACCEPT; // not from a pod of this node
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
	__u32 remote_id = lookup_ip(&fn_ipcache, p.daddr, NULL);
	if (!remote_id)
		remote_id = IDENTITY_WORLD;
	if (remote_id == IDENTITY_HOST)
		return NF_ACCEPT;
	struct decision d = {};
	void *pol = bpf_map_lookup_elem(&fn_policy, &ifindex);
	if (!pol) {
		d.code = DROP_NO_POLICY;
	} else {
		__u32 cidr_id = lookup_ip(&fn_cidrcache, p.daddr, NULL);
		decide(pol, DIR_EGRESS, remote_id, cidr_id, &p, &d);
	}
	if (!d.allow) {
		count(ifindex, DIR_EGRESS, d.code, p.len);
		emit(ifindex, DIR_EGRESS, &p, VERDICT_DROP, d.code, d.rule_id, remote_id, ep->identity);
		return NF_DROP;
	}
	count(ifindex, DIR_EGRESS, FORWARD_SERVICE_BACKEND, p.len);
	return NF_ACCEPT;
}
