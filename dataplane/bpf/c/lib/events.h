// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// What the programs report of each packet: per-endpoint counters by verdict code
// (fn_counters) and flow events into the ring buffer (fn_events), rate-limited per
// CPU (fn_event_budget).
#pragma once

#include "maps.h"
#include "parse.h"

// count adds a packet (bytes long) to the endpoint's counter of code in dir.
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

// emit_clocked writes p's flow event into the ring, unless events are off
// (DP_F_NO_EVENTS); one the CPU's budget or a full ring has no room for is counted
// lost. The bucket refills by the coarse clock (a tick is precise enough for a rate
// per second) unless precise (netfilter programs may not read the coarse one): the
// precise clock, a clock source read, is read for an event written, and under a
// flood of new connections most are lost to the bucket.
static __always_inline void emit_clocked(int precise, __u32 ifindex, __u8 dir, const struct pkt *p, __u8 verdict,
					 __u8 code, __u32 rule_id, __u32 remote_id, __u32 local_id)
{
	__u32 zero = 0;
	struct event_budget *b = bpf_map_lookup_elem(&fn_event_budget, &zero);
	struct dp_config *cfg = bpf_map_lookup_elem(&fn_config, &zero);
	if (!b || !cfg || cfg->flags & DP_F_NO_EVENTS)
		return;
	__u64 now = precise ? bpf_ktime_get_ns() : bpf_ktime_get_coarse_ns();
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
	e->ts_ns = precise ? now : bpf_ktime_get_ns();
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
	e->cpu = bpf_get_smp_processor_id();
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

// emit is emit_clocked for the tcx programs.
static __always_inline void emit(__u32 ifindex, __u8 dir, const struct pkt *p, __u8 verdict, __u8 code,
				 __u32 rule_id, __u32 remote_id, __u32 local_id)
{
	emit_clocked(0, ifindex, dir, p, verdict, code, rule_id, remote_id, local_id);
}

// drop_clocked counts and reports a dropped packet of the endpoint on ifindex (bytes
// long), as emit_clocked; it returns the tcx verdict that drops it.
static __always_inline int drop_clocked(int precise, __u32 ifindex, __u8 dir, const struct pkt *p, __u32 bytes,
					__u8 code, __u32 rule_id, __u32 remote_id, __u32 local_id)
{
	count(ifindex, dir, code, bytes);
	emit_clocked(precise, ifindex, dir, p, VERDICT_DROP, code, rule_id, remote_id, local_id);
	return TCX_DROP;
}

// drop is drop_clocked for the tcx programs.
static __always_inline int drop(__u32 ifindex, __u8 dir, const struct pkt *p, __u32 bytes, __u8 code, __u32 rule_id,
				__u32 remote_id, __u32 local_id)
{
	return drop_clocked(0, ifindex, dir, p, bytes, code, rule_id, remote_id, local_id);
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

