// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Packet parsing: the frame's Ethernet, ARP, IPv4 and L4 headers into struct pkt,
// ICMP errors' embedded tuple, and the ports of IPv4 fragments after the first
// (fn_frags).
#pragma once

#include "maps.h"

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

// parse_skb is parse, with the headers a non-linear skb holds beyond its linear part
// pulled in when parse finds them cut short there.
static __always_inline int parse_skb(struct __sk_buff *skb, struct pkt *p, __u32 ifindex)
{
	int r = parse(skb, p, ifindex);
	if (r < 0 && skb->len > skb->data_end - skb->data) {
		__u32 want = skb->len < MAX_HEADERS ? skb->len : MAX_HEADERS;
		if (!bpf_skb_pull_data(skb, want))
			r = parse(skb, p, ifindex);
	}
	return r;
}

// ipv4 is the packet's IPv4 header (parse has checked the frame is IPv4), or NULL.
static __always_inline struct iphdr *ipv4(struct __sk_buff *skb)
{
	struct iphdr *ip = (void *)(long)skb->data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > (void *)(long)skb->data_end)
		return NULL;
	return ip;
}

