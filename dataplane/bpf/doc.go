// Package bpf is flatnet's policy datapath: the C programs in c/, their bpf2go output,
// and the only code that knows the maps' layouts. Everyone else goes through Datapath:
// Load pins programs and maps under a bpffs directory, AttachEndpoint fills an
// endpoint's maps and attaches the programs to its host-side veth (clsact filters,
// both directions: hook.go), Apply writes compiler updates, and the flow reader drains the ring
// buffer of flow events.
package bpf

// The generated objects are committed; scripts/check-bpf-generated.sh verifies they
// match the sources. -ffile-prefix-map keeps the checkout path out of BTF line info, and
// -nostdinc with -I c/third_party/{libbpf,linux} compiles against the vendored
// third-party headers alone (c/third_party/README.md), so the same clang gives the same
// bytes anywhere.
//go:generate go tool bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -ffile-prefix-map=${PWD}=. -nostdinc -Ic/third_party/libbpf -Ic/third_party/linux" -target bpfel -no-global-types -type endpoint_info -type local_ep -type ipcache_key -type ipcache_val -type policy_key -type policy_val -type ct_key -type ct_val -type counter_key -type counter_val -type event_budget -type dp_config -type policy_rev -type flow_event -type identity_sum datapath c/datapath.c
