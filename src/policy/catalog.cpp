#include "policy/catalog.h"

#include <charconv>

#include "liveio/io_edge.h"

namespace liveio::policy {

const KnobDef* PolicyDef::knob(std::string_view n) const {
    for (const KnobDef& k : knobs)
        if (k.name == n) return &k;
    return nullptr;
}

Result<std::pair<const KnobDef*, uint64_t>> PolicyDef::parse_setting(
    std::string_view setting) const {
    const size_t eq = setting.find('=');
    std::string names;
    for (const KnobDef& k : knobs) names += (names.empty() ? "" : ", ") + k.name;
    if (eq == std::string_view::npos || eq == 0)
        return make_error(EINVAL,
                          "expected KEY=VALUE for policy '" + name + "' (knobs: " + names + ")");
    const KnobDef* k = knob(setting.substr(0, eq));
    if (k == nullptr)
        return make_error(ENOENT, "policy '" + name + "' has no knob '" +
                                      std::string(setting.substr(0, eq)) + "' (knobs: " + names +
                                      ")");
    const std::string_view text = setting.substr(eq + 1);
    uint64_t value = 0;
    int base = 10;
    std::string_view digits = text;
    if (digits.starts_with("0x")) {
        base = 16;
        digits.remove_prefix(2);
    }
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value, base);
    if (ec != std::errc() || end != digits.data() + digits.size() || digits.empty())
        return make_error(EINVAL, "knob '" + k->name + "' of policy '" + name +
                                      "' needs an unsigned integer, got '" + std::string(text) +
                                      "'");
    return std::make_pair(k, value);
}

const std::vector<PolicyDef>& catalog() {
    static const std::vector<PolicyDef> policies = {
        {"prefetch",
         "policies/prefetch.bpf.o",
         "read-ahead into the page cache for sequential and strided read streams of data files",
         {
             {"depth_kb", 0, 4096, "initial prefetch depth ahead of a stream (KiB)"},
             {"min_depth_kb", 1, 1024, "lower bound of the adapted depth (KiB)"},
             {"max_depth_kb", 2, 32768, "upper bound of the adapted depth (KiB)"},
             {"min_read", 3, 4096, "reads shorter than this (bytes) are ignored"},
             // ClickHouse glue: column files (*.bin) are the data files by default.
             {"classes", 4, 1u << LIVEIO_CLASS_CH_BIN,
              "bit mask of file classes (1 << enum liveio_file_class)"},
             {"adapt", 5, 1,
              "1: adapt the depth to hits, waste and latency feedback; 0: fixed depth"},
             {"open_kb", 6, 1024,
              "data files a thread opened, when its next read is a scan's: prefetch their first "
              "KiB "
              "(0: off)"},
             {"latency_pct", 7, 200,
              "recent action latency per MiB above this % of the lowest seen halves the depth"},
             {"adapt_reads", 8, 16, "reads (all streams) between two adaptations of the depth"},
             {"wait_us", 9, 0,
              "a read slower than this per MiB waited on the device: its stream is prefetched "
              "even while the kernel's readahead holds its next bytes (us; 0: never)"},
             {"shared", 10, 1,
              "1: a file's prefetch windows are shared by every thread and descriptor reading "
              "it; 0: one per stream (thread, descriptor)"},
             {"fill", kRuntimeKnob, 0,
              "0: prefetches are advised (POSIX_FADV_WILLNEED: 4 KiB folios); 1: read into the "
              "page cache through the target's descriptor (a buffered io_uring read into a "
              "discarded buffer: large folios, a third of the CPU, but it moves the "
              "descriptor's readahead state)"},
             {"budget_mb", kRuntimeKnob, 256,
              "bytes in flight on the I/O thread, all policies (MiB)"},
         }},
        {"marks",
         "policies/marks.bpf.o",
         "ClickHouse point lookups: kept marks turn a column read naming granules i..k into one "
         "batch prefetching granules i..k of every column of the part not read yet",
         {
             {"max_kb", 0, 1024, "most bytes prefetched per column and granule range (KiB)"},
             {"unread_max", 1, 2,
              "rounds in a row a column's batched range goes unread before it leaves the batch "
              "(it comes back when read)"},
             {"guess_kb", 2, 128,
              "a read naming a block of several granules batches the columns whose bytes for all "
              "of them are at most this (KiB; 0: none)"},
             {"part", 3, 1,
              "1: at a part reader's marks-file opens (a mark-cache miss) the marks files it "
              "will open next, as earlier readers of the table that opened its columns so far "
              "predict, are read into the page cache in parallel through io_uring direct "
              "descriptors; 2: every marks file of the part at the reader's first open; 0: off"},
             {"fill", kRuntimeKnob, 0,
              "0: the granule ranges are advised (POSIX_FADV_WILLNEED: exactly the range); 1: "
              "read through the page cache like prefetch's (the kernel's readahead then reads "
              "past each range: 2-4x a range read at a random offset)"},
             {"budget_mb", kRuntimeKnob, 256,
              "bytes in flight on the I/O thread, all policies (MiB)"},
         }},
        {"uring",
         "policies/uring.bpf.o",
         "blocking file and socket calls performed through per-thread io_uring rings (exact "
         "results)",
         {
             {"classes", 0, ~uint64_t{0}, "bit mask of file classes whose calls are redirected"},
             {"no_aio", 1, 0,
              "1: new Linux AIO contexts stay native (io_submit/io_getevents not translated)"},
             {"nowait", 2, 1,
              "1: reads of regular files try the page cache first (preadv2 RWF_NOWAIT) and go "
              "through the ring only when it would wait; read when the policy is switched on"},
         }},
    };
    return policies;
}

Result<const PolicyDef*> find_policy(std::string_view name) {
    std::string names;
    for (const PolicyDef& p : catalog()) {
        if (p.name == name) return &p;
        names += (names.empty() ? "" : ", ") + p.name;
    }
    return make_error(ENOENT, "no policy '" + std::string(name) + "' (policies: " + names + ")");
}

}  // namespace liveio::policy
