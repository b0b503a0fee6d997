// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The kernel structures the netfilter program (service_egress) reads: the few fields
// it uses, resolved through CO-RE against the running kernel's BTF at load.
#pragma once

#include "common.h"

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
