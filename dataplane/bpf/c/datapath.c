// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// flatnet policy datapath: programs on each pod's host-side veth (tcx).
//   tcx ingress of the host veth = traffic leaving the pod  (DIR_EGRESS)
//   tcx egress  of the host veth = traffic entering the pod (DIR_INGRESS)
// Every lookup is a hash or LPM lookup with a bounded key: the cost per packet does
// not depend on the number of rules.
//
// This file holds the programs and the stages of a packet's judgement (handle); the
// parts they are made of are in lib/, one concern each: maps.h (every pinned map),
// parse.h, events.h (counters and flow events), conntrack.h, policy.h (identities
// and the policy map's verdict), local_delivery.h and netfilter.h (the kernel fields
// service_egress reads). datapath.h has the layouts Go shares.

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/parse.h"
#include "lib/events.h"
#include "lib/policy.h"
#include "lib/local_delivery.h"
#include "lib/conntrack.h"
#include "lib/netfilter.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Types only reached through pointers: these make BTF (and bpf2go) carry them whole.
const struct flow_event *unused_flow_event __attribute__((unused));
const struct policy_key *unused_policy_key __attribute__((unused));
const struct policy_val *unused_policy_val __attribute__((unused));

// pass_tracked lets a packet of a tracked connection through: the entry refreshed
// with flags and the policy revision rev it is known allowed under, the packet
// counted under code, and, from a pod, delivered directly
// when the connection is. Into a pod, the entry's direct flag follows the way the
// packet came: a Service connection may reuse the tuple a direct one had (a UDP
// source port reused), and its replies must then go back through netfilter.
static __always_inline int pass_tracked(struct __sk_buff *skb, const struct ct_val *ct, int where,
					const struct ct_key *ck, __u8 flags, __u16 rev, __u64 now, const struct pkt *p,
					__u32 ifindex, __u8 dir, __u8 code)
{
	if (dir == DIR_INGRESS)
		flags = (flags & ~CT_F_DIRECT) | (skb->mark & DIRECT_MARK ? CT_F_DIRECT : 0);
	struct ct_val nv = *ct;
	nv.flags = flags;
	nv.policy_rev = rev;
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
			goto refuse;
		}
		local_id = ep->identity;
		__u32 addr = ep->addr;
		if (p->saddr != addr) {
			code = DROP_INVALID_SOURCE;
			goto refuse;
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
				goto refuse;
			}
		}
	}
	count(ifindex, dir, code, skb->len);
	return TCX_NEXT;
refuse:
	return drop(ifindex, dir, p, skb->len, code, 0, 0, local_id);
}

// drop_unparsed drops a frame parse refused (r: -1 for headers cut short or
// malformed, else its drop code).
static __always_inline int drop_unparsed(struct __sk_buff *skb, __u8 dir, __u32 ifindex, struct pkt *p, int r)
{
	__u8 code = r < 0 ? DROP_MALFORMED : r;
	struct endpoint_info *ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
	if (ep && (code == DROP_UNKNOWN_L3 || code == DROP_UNSUPPORTED_L2)) {
		// No IPv4 addresses in the frame: the pod's own names it in the event.
		if (dir == DIR_EGRESS)
			p->saddr = ep->addr;
		else
			p->daddr = ep->addr;
	}
	return drop(ifindex, dir, p, skb->len, code, 0, 0, ep ? ep->identity : 0);
}

// A packet's connection: its conntrack key, from the pod's side, and the tracked
// entry the packet continues, if any.
struct conn {
	struct ct_key key;
	struct ct_val entry;
	int where; // where ct_get found entry (CT_IN_*); 0: the packet opens a connection
	int found; // where ct_get found an entry of the tuple, lapsed or closing ones too
};

// lookup_connection decides which tracked connection p continues: it fills c and
// returns 1, or returns 0 when p opens a new one (none tracked, expired, or a SYN
// on the tuple of a closing connection).
//
// Connection tracking: one entry per connection and endpoint, keyed from the pod's
// side, remembering which direction opened it. Entries are only made with the
// endpoint's own address as the pod's: a packet that matches one has a valid
// source, and the endpoint lookup is left to packets that need it.
static __always_inline int lookup_connection(const struct pkt *p, __u8 dir, __u32 ifindex, __u64 now, struct conn *c)
{
	c->key = ct_key_of(ifindex, p->proto, dir == DIR_EGRESS, p->saddr, p->daddr, p->sport, p->dport);
	c->where = ct_get(ifindex, &c->key, now, &c->entry, opens_tcp(p));
	c->found = c->where;
	if (c->where && c->entry.expires_ns < now)
		c->where = 0;
	// A SYN on the tuple of a closing connection opens a new one (port reuse within
	// the closing lifetime): judge it afresh, in whichever direction it comes, and
	// never as a reply of the old one.
	if (c->where && (c->entry.flags & CT_F_CLOSING) && opens_tcp(p))
		c->where = 0;
	return c->where != 0;
}

// judge_source decides whether the endpoint ep may open a connection with p: from
// the pod, only from its own address and not to the node's loopback or 0/8.
// Returns 0, or the drop code.
static __always_inline __u8 judge_source(__u8 dir, const struct endpoint_info *ep, const struct pkt *p)
{
	if (dir != DIR_EGRESS)
		return 0;
	if (p->saddr != ep->addr)
		return DROP_INVALID_SOURCE;
	// The node's loopback (127/8) and 0/8 are no destination for a pod: with
	// route_localnet=1 (kube-proxy) the host answers them from its loopback-only
	// services (the agent's API) unless a firewall rule says otherwise.
	__u8 first = bpf_ntohl(p->daddr) >> 24;
	if (first == 127 || first == 0)
		return DROP_UNROUTABLE;
	return 0;
}

// judge_peer decides whether the endpoint on ifindex may exchange p in dir with the
// peer at peer_addr, filling d; it returns the peer's identity. Its own node is
// always allowed; from the pod, Service addresses and the node's own pass marked, to
// be judged on the backend; every other peer by the endpoint's policy.
static __always_inline __u32 judge_peer(struct __sk_buff *skb, __u8 dir, __u32 ifindex, __u32 peer_addr,
					const struct pkt *p, struct decision *d)
{
	__u32 ipc_flags = 0;
	__u32 remote_id = remote_identity(peer_addr, &ipc_flags);
	if (dir == DIR_EGRESS && (ipc_flags & IPCACHE_F_SERVICE || remote_id == IDENTITY_HOST)) {
		// A Service address (ClusterIP), or the node's own address (a NodePort):
		// kube-proxy may DNAT it after this hook, so the egress decision is made on
		// the backend by service_egress on FORWARD; mark the packet for it. Packets
		// the node keeps for itself never reach FORWARD and stay allowed. The
		// connection is tracked here under the address the pod used, which is what
		// the un-DNATed replies carry.
		skb->mark |= SERVICE_MARK;
		d->allow = 1;
		d->code = remote_id == IDENTITY_HOST ? FORWARD_HOST : FORWARD_SERVICE;
	} else if (remote_id == IDENTITY_HOST) {
		// Own node -> pod (kubelet probes) is always allowed.
		d->allow = 1;
		d->code = FORWARD_HOST;
	} else {
		policy_verdict(ifindex, dir, remote_id, peer_addr, p, d);
	}
	return remote_id;
}

// create_connection tracks the connection p opens (c: its tuple), which judge_peer
// allowed (d), and forwards p: counted, reported, and from a pod handed straight to
// a local pod when the connection qualifies for direct delivery.
static __always_inline int create_connection(struct __sk_buff *skb, __u8 dir, __u32 ifindex, const struct pkt *p,
					     const struct conn *c, const struct endpoint_info *ep,
					     const struct decision *d, __u32 remote_id, __u32 local_id, __u8 closing,
					     __u16 rev, __u64 now)
{
	struct ct_val nv = {
		.origin_dir = dir,
		.flags = closing,
		.rule_id = d->rule_id,
		.policy_rev = rev,
	};
	struct local_ep *le = NULL;
	if (dir == DIR_EGRESS) {
		// Only the opening packet of a connection starts direct delivery: a lost
		// entry re-created mid-connection may belong to a NATed one.
		if (d->code == FORWARD_POLICY && (p->proto == IPPROTO_UDP || opens_tcp(p)))
			le = local_target(skb, p);
		// A tuple the receiver tracks for a NATed connection goes through the host,
		// whose conntrack moves it to another source port.
		if (le && ct_clashes(le->ifindex, p, now))
			le = NULL;
		if (le)
			nv.flags |= CT_F_DIRECT;
	} else if (skb->mark & DIRECT_MARK) {
		nv.flags |= CT_F_DIRECT;
	}
	nv.expires_ns = now + ct_lifetime(p, closing);
	// Only under the endpoint's own address (see lookup_connection); a packet to
	// another address routed out of this veth passes untracked. A tuple used again
	// while its closing entry lingers (a client reusing its ports, as under TCP_CRR)
	// is written over in place: an LRU update would take a free entry, evicting a
	// cold one, and free the old.
	if (ep && c->key.pod_addr == ep->addr) {
		struct ct_val *e = c->found == CT_IN_SHARED ? bpf_map_lookup_elem(&fn_ct, &c->key) : NULL;
		if (e)
			*e = nv;
		else
			bpf_map_update_elem(&fn_ct, &c->key, &nv, BPF_ANY);
	}
	count(ifindex, dir, d->code, skb->len);
	emit(ifindex, dir, p, VERDICT_FORWARD, d->code, d->rule_id, remote_id, local_id);
	if (le)
		return deliver_local(skb, le);
	return TCX_NEXT;
}

// handle judges a packet of the endpoint on host veth ifindex going in direction dir,
// counts it, reports it, and returns the tcx verdict: a reply of a tracked connection
// passes; a packet continuing one in its opening direction passes when policy allowed
// the connection under the current policy revision, else is judged by its peer; a
// packet opening a connection is judged by its source and its peer, and a new
// connection is created.
static __always_inline int handle(struct __sk_buff *skb, __u8 dir, __u32 ifindex)
{
	struct pkt p = {};
	int r = parse_skb(skb, &p, ifindex);
	if (r == PARSE_ARP)
		return handle_arp(skb, dir, ifindex, &p);
	if (r != 0)
		return drop_unparsed(skb, dir, ifindex, &p, r);
	// The coarse clock (CLOCK_MONOTONIC as of the last tick) is precise enough for
	// lifetimes of seconds, and reading the precise one costs every packet a clock
	// source read (a tenth of the programs' time under TCP_CRR here).
	__u64 now = bpf_ktime_get_coarse_ns();
	if (p.related && related(skb, &p, ifindex, dir, now))
		return TCX_NEXT;

	struct conn c;
	int tracked = lookup_connection(&p, dir, ifindex, now, &c);
	__u8 closing = (p.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) ? CT_F_CLOSING : 0;
	if (tracked && c.entry.origin_dir != dir) {
		// A reply of a connection this endpoint's policy (or its peer) let through.
		return pass_tracked(skb, &c.entry, c.where, &c.key, c.entry.flags | CT_F_SEEN_REPLY | closing,
				    c.entry.policy_rev, now, &p, ifindex, dir, FORWARD_REPLY);
	}
	// Read before anything the verdict depends on: a write the agent makes after
	// this read bumps the revision past it, and the next packet is judged again.
	__u16 rev = policy_revision();
	if (tracked && rev && c.entry.policy_rev == rev) {
		// Allowed by policy under the current revision: nothing it read has changed.
		return pass_tracked(skb, &c.entry, c.where, &c.key, c.entry.flags | closing, rev, now, &p, ifindex, dir,
				    FORWARD_ESTABLISHED);
	}

	struct endpoint_info *ep = NULL;
	__u32 local_id = 0;
	if (!tracked) {
		ep = bpf_map_lookup_elem(&fn_endpoints, &ifindex);
		if (!ep) // attached but not (or no longer) known: fail closed
			return drop(ifindex, dir, &p, skb->len, DROP_NO_ENDPOINT, 0, 0, 0);
		local_id = ep->identity;
		__u8 code = judge_source(dir, ep, &p);
		if (code)
			return drop(ifindex, dir, &p, skb->len, code, 0, 0, local_id);
	}

	struct decision d = {};
	__u32 remote_id = judge_peer(skb, dir, ifindex, c.key.peer_addr, &p, &d);
	if (!d.allow)
		return drop(ifindex, dir, &p, skb->len, d.code, d.rule_id, remote_id, endpoint_identity(ifindex, local_id));
	// Only a verdict of the policy map is remembered: Service and node peers are
	// judged (and marked) on every packet.
	if (d.code != FORWARD_POLICY)
		rev = 0;
	if (tracked)
		return pass_tracked(skb, &c.entry, c.where, &c.key, c.entry.flags | closing, rev, now, &p, ifindex, dir,
				    FORWARD_ESTABLISHED);
	return create_connection(skb, dir, ifindex, &p, &c, ep, &d, remote_id, local_id, closing, rev, now);
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
// before the masquerade, which to_pod would only see as the node. lib/netfilter.h
// has the kernel fields it reads.


// nf_judge decides a new-or-opening packet for the endpoint on ifindex in direction
// dir against remote addr; drops are counted and reported as from_pod/to_pod would.
static __always_inline int nf_judge(__u32 ifindex, __u8 dir, __u32 addr, __u32 local_id, const struct pkt *p)
{
	__u32 remote_id = remote_identity(addr, NULL);
	if (remote_id == IDENTITY_HOST)
		return 1;
	struct decision d = {};
	policy_verdict(ifindex, dir, remote_id, addr, p, &d);
	if (!d.allow)
		drop_clocked(1, ifindex, dir, p, p->len, d.code, d.rule_id, remote_id, local_id);
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
