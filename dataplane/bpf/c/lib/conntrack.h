// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Connection tracking: entries keyed from the pod's side in the shared table of new
// and closing connections (fn_ct) and the endpoint's table of established ones
// (fn_ct_est), their lifetimes, and ICMP errors related to a tracked connection.
#pragma once

#include "maps.h"
#include "parse.h"
#include "events.h"

// policy_revision is the current policy revision (0 if unreadable: judge again).
static __always_inline __u16 policy_revision(void)
{
	__u32 zero = 0;
	struct policy_rev *r = bpf_map_lookup_elem(&fn_policy_rev, &zero);
	return r ? (__u16)r->rev : 0;
}

// ct_lifetime is how long from now an entry with flags lives, for p's protocol.
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

// ct_key_of is the key of a tuple on the endpoint on ifindex, seen from the pod's
// side: the pod is the tuple's source when pod_is_source, else its destination.
static __always_inline struct ct_key ct_key_of(__u32 ifindex, __u8 proto, int pod_is_source, __u32 saddr, __u32 daddr,
						__u16 sport, __u16 dport)
{
	struct ct_key k = {.ifindex = ifindex, .proto = proto};
	if (pod_is_source) {
		k.pod_addr = saddr;
		k.peer_addr = daddr;
		k.pod_port = sport;
		k.peer_port = dport;
	} else {
		k.pod_addr = daddr;
		k.peer_addr = saddr;
		k.pod_port = dport;
		k.peer_port = sport;
	}
	return k;
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
//
// For a SYN (syn: a TCP SYN without ACK) the shared table is read first: a SYN
// mostly comes on a new tuple or on one whose closing entry lingers (a client
// reusing its ports, as under TCP_CRR), and a live closing entry there settles it
// without the two lookups of the endpoint's table, which holds no closing
// connection (ct_set writes one to the shared table, then deletes it there).
__attribute__((noinline)) int ct_get(__u32 ifindex, const struct ct_key *k, __u64 now, struct ct_val *v, int syn)
{
	if (!k || !v)
		return 0;
	struct ct_val *s = syn ? bpf_map_lookup_elem(&fn_ct, k) : NULL;
	if (s && (s->flags & CT_F_CLOSING) && s->expires_ns >= now) {
		*v = *s;
		return CT_IN_SHARED;
	}
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
	if (!syn)
		s = bpf_map_lookup_elem(&fn_ct, k);
	if (!s)
		return 0;
	*v = *s;
	return CT_IN_SHARED;
}

// opens_tcp reports whether p is a TCP SYN without ACK, which opens a connection.
static __always_inline int opens_tcp(const struct pkt *p)
{
	return p->proto == IPPROTO_TCP && (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

// ct_set stores a tracked connection's new state (nv; it was old, where ct_get
// found it). An established connection (a reply seen, not closing) moves into the
// endpoint's table, unless that is full (it then stays shared); a closing one moves
// back out, so closed connections take no room there.
//
// Moving in leaves the shared entry behind, hidden: ct_get looks in the endpoint's
// table first, and the entry left behind lapses no later than the established one
// (its lifetime was set before the move and is never refreshed after it), so it is
// never found once the established one is gone, unless the move back out has
// overwritten it. Moving out writes over it in place when the LRU has not evicted
// it. A short connection (TCP_CRR) so pays no LRU delete at its reply and no LRU
// insert at its FIN: each touches cold entries of a table of 262,144 (the pop of a
// free entry evicts one), where a write in place touches the entry just looked up.
__attribute__((noinline)) int ct_set(__u32 ifindex, const struct ct_key *k, int where, const struct ct_val *old,
				     const struct ct_val *nv)
{
	if (!k || !old || !nv)
		return 0;
	int est = (nv->flags & (CT_F_SEEN_REPLY | CT_F_CLOSING)) == CT_F_SEEN_REPLY;
	int in_est = where == CT_IN_EST;
	if (est == in_est && nv->flags == old->flags && nv->policy_rev == old->policy_rev &&
	    nv->expires_ns < old->expires_ns + CT_REFRESH_NS)
		return 0; // the common case: nothing worth a write
	void *t = bpf_map_lookup_elem(&fn_ct_est, &ifindex);
	if (est && !in_est && t && bpf_map_update_elem(t, k, nv, BPF_NOEXIST) == 0)
		return 0; // moved in; the shared entry stays behind, hidden (above)
	// Staying where it is, moving out, or the endpoint's table full: in place.
	struct ct_val *e;
	if (in_est && est)
		e = t ? bpf_map_lookup_elem(t, k) : NULL;
	else
		e = bpf_map_lookup_elem(&fn_ct, k);
	if (e)
		*e = *nv;
	else if (est != in_est) // the shared entry was evicted meanwhile
		bpf_map_update_elem(&fn_ct, k, nv, BPF_ANY);
	if (in_est && !est && t)
		bpf_map_delete_elem(t, k); // after the shared write: a lookup meanwhile finds one of them
	return 0;
}

// ct_clashes reports whether the pod on ifindex, which p is addressed to, already
// tracks a connection on p's tuple that did not come directly: one the host's
// netfilter DNATed to it (the sender's Service connection from the same source
// port). p delivered directly would skip the host's conntrack, which gives a
// connection clashing with another a new source port, and the pod's stack would
// take p for a packet of the other (a SYN answered with an ACK, which the sender
// answers with a reset that kills the Service connection).
static __always_inline int ct_clashes(__u32 ifindex, const struct pkt *p, __u64 now)
{
	struct ct_key k = ct_key_of(ifindex, p->proto, 0, p->saddr, p->daddr, p->sport, p->dport);
	struct ct_val v;
	return ct_get(ifindex, &k, now, &v, opens_tcp(p)) && v.expires_ns >= now && !(v.flags & CT_F_DIRECT);
}

// related passes an ICMP error about a connection tracked for this endpoint, in
// either direction (as conntrack's RELATED): returns 1 when it did. The embedded
// packet went the other way: out of the pod when the error comes in, and back.
static __always_inline int related(struct __sk_buff *skb, const struct pkt *p, __u32 ifindex, __u8 dir, __u64 now)
{
	struct ct_key k = ct_key_of(ifindex, p->rel_proto, dir == DIR_INGRESS, p->rel_saddr, p->rel_daddr, p->rel_sport,
				    p->rel_dport);
	__u32 pod_side = dir == DIR_EGRESS ? p->saddr : p->daddr;
	// Entries are made only under the endpoint's own address: the error must be
	// from (to) that address too, which is the source check for it.
	if (pod_side != k.pod_addr)
		return 0;
	struct ct_val ctv;
	if (!ct_get(ifindex, &k, now, &ctv, 0) || ctv.expires_ns < now)
		return 0;
	count(ifindex, dir, FORWARD_RELATED, skb->len);
	return 1;
}
