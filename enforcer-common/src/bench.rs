//! The benchmark's own eBPF object (`enforcer-ebpf/src/bench.rs`, built
//! beside the datapath, loaded only by `ee-bench`): the names and sizes both
//! sides use. None of this is part of the agent's pinned layout.

/// `BENCH_DST4` / `BENCH_DST6`: `Array<[u8; 4]>` / `Array<[u8; 16]>`,
/// `BPF_F_MMAPABLE`, the random destinations the bench programs walk (a
/// power of two: the index is masked). 1 Mi entries: more than the
/// database's prefixes, so consecutive runs do not reuse a cache line.
pub const BENCH_DESTS: u32 = 1 << 20;
pub const BENCH_DST4: &str = "BENCH_DST4";
pub const BENCH_DST6: &str = "BENCH_DST6";
/// `BENCH_LPM4` / `BENCH_LPM6`: the plain LPM trie baseline, address ->
/// country index, as the agent stored GeoIP before the flat tables.
pub const BENCH_LPM4: &str = "BENCH_LPM4";
pub const BENCH_LPM6: &str = "BENCH_LPM6";
/// Capacity of each baseline trie (the full geo-whois database needs about
/// 500k per family after aggregation).
pub const BENCH_LPM_CAPACITY: u32 = 1 << 20;

/// The bench programs, by family: empty, the decision, the LPM trie
/// baseline, the decision's two lookups alone (exception rules, GeoIP flat
/// table), the decision on one destination repeated (warm caches), and
/// the decision with the allowed sample's update (random destinations, and
/// one repeated). Each walks the
/// destinations the same way (a per-CPU cursor,
/// one destination per run), so the empty program's time is exactly what
/// the others share.
pub const BENCH_PROGRAMS: [[&str; 8]; 2] = [
    [
        "bench_empty4",
        "bench_decide4",
        "bench_lpm4",
        "bench_rules4",
        "bench_geo4",
        "bench_hot4",
        "bench_sample4",
        "bench_sample_hot4",
    ],
    [
        "bench_empty6",
        "bench_decide6",
        "bench_lpm6",
        "bench_rules6",
        "bench_geo6",
        "bench_hot6",
        "bench_sample6",
        "bench_sample_hot6",
    ],
];
