// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// The datapath's maps, all pinned by name: their names, types, sizes and key and value
// layouts are what a restarted or upgraded agent finds pinned (upgrade.go, and its
// testdata object, compare them), so a change here is an upgrade.
#pragma once

#include "common.h"

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

// The policy revision (struct policy_rev): a packet continuing a connection in its
// opening direction skips the policy lookup when the connection was allowed under
// the current revision.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_rev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fn_policy_rev SEC(".maps");
