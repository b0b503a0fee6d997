// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Policy lookup: a remote address's identities (fn_ipcache, fn_cidrcache) and the
// endpoint's policy map's verdict for them, by the compiler's precedence.
#pragma once

#include "maps.h"
#include "parse.h"

// lookup_ip is the identity of addr's longest prefix in map (fn_ipcache or
// fn_cidrcache), 0 when none, and the entry's flags in *flags (unless NULL).
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

// remote_identity is the identity the IP cache gives addr, world when it has none,
// and the entry's flags in *flags (unless NULL).
static __always_inline __u32 remote_identity(__u32 addr, __u32 *flags)
{
	__u32 id = lookup_ip(&fn_ipcache, addr, flags);
	return id ? id : IDENTITY_WORLD;
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

// policy_verdict decides by the policy map of the endpoint on ifindex whether it may
// exchange p in dir with the remote at addr (identity remote_id): an endpoint without
// a policy map drops everything (DROP_NO_POLICY).
static __always_inline void policy_verdict(__u32 ifindex, __u8 dir, __u32 remote_id, __u32 addr, const struct pkt *p,
					   struct decision *d)
{
	void *pol = bpf_map_lookup_elem(&fn_policy, &ifindex);
	if (!pol) {
		d->allow = 0;
		d->code = DROP_NO_POLICY;
		d->rule_id = 0;
		return;
	}
	__u32 cidr_id = lookup_ip(&fn_cidrcache, addr, NULL);
	decide(pol, dir, remote_id, cidr_id, p, d);
}
