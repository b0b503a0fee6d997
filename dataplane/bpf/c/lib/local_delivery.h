// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Direct local delivery (Cilium's "BPF host routing", for pods of one node).
//
// A packet from a pod to another pod of the same node is handed by from_pod straight
// to the destination's host veth with bpf_redirect_neigh, skipping the host stack's
// IP input, netfilter and forwarding; to_pod still runs on the way out and judges the
// destination's ingress. Only traffic no NAT applies to may skip netfilter: a new
// connection qualifies when it is addressed to a local pod (kube-proxy and hostPort
// DNAT only Service and node addresses) and starts as a connection does (a TCP SYN,
// or UDP), unfragmented, on a tuple the receiver does not track for a NATed
// connection (ct_clashes: the host's conntrack gives it another source port); its
// conntrack entries on both pods carry CT_F_DIRECT, and
// only packets of such connections are delivered directly. Everything else, replies
// of Service connections that netfilter must un-DNAT among them, takes the stack.
#pragma once

#include "maps.h"
#include "parse.h"

static __always_inline int host_routing(void)
{
	__u32 zero = 0;
	struct dp_config *cfg = bpf_map_lookup_elem(&fn_config, &zero);
	return cfg && (cfg->flags & DP_F_HOST_ROUTING);
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

