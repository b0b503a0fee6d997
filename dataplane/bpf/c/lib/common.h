// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// What every part of the datapath includes: the vendored kernel and libbpf headers
// (c/third_party, nothing of the host's), the layouts shared with Go (datapath.h), and
// the tcx verdicts the programs return.
#pragma once

#include <uapi.h>
#include <bpf_helpers.h>
#include <bpf_endian.h>

#include "../datapath.h"

// tcx verdicts (uapi since 6.6; spelled out for older headers).
#define TCX_NEXT -1
#define TCX_DROP 2
