// The vm.mmap_min_addr guard of the rewrite tests lives in src/base (liveio soak uses it too).
#pragma once

#include "base/mmap_min_addr.h"

namespace liveio::agent::testing {
using liveio::MmapMinAddrZero;
}  // namespace liveio::agent::testing
