//! Kernel memory of every BPF map this process holds, from the kernel's own
//! accounting, and a process's peak RSS.
//!
//! `memlock:` in /proc/<pid>/fdinfo/<map fd> is `bpf_map_memory_usage()`
//! since Linux 6.4 (kernel/bpf/syscall.c, `bpf_map_show_fdinfo`): each map
//! type's `map_mem_usage` callback, i.e. what the map holds (an LPM trie
//! counts its allocated nodes), not an estimate from max_entries.

use std::{collections::BTreeSet, fs};

use crate::report::MapMemory;

/// Every BPF map reachable through this process's fds, once per map id.
/// `owner` says which side a map belongs to: the bench object's LPM tries
/// are the baseline, its other `BENCH_*` maps the harness; the rest are the
/// enforcer's (the bench object shares them, so each is listed once: the
/// object's own unpinned socket storage has the same name as the agent's).
pub fn maps() -> Vec<MapMemory> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let Ok(fds) = fs::read_dir("/proc/self/fd") else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(link) = fs::read_link(fd.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            fd.file_name().to_string_lossy()
        )) else {
            continue;
        };
        let field = |k: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.trim_start_matches([':', ' ', '\t']).trim().parse().ok())
        };
        let (Some(id), Some(bytes)) = (field("map_id"), field("memlock")) else {
            continue;
        };
        if !seen.insert(id) {
            continue;
        }
        let name = aya::maps::MapInfo::from_id(id as u32)
            .ok()
            .and_then(|m| m.name_as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("map {id}"));
        let owner = if name.starts_with("BENCH_LPM") {
            "LPM trie baseline"
        } else if name.starts_with("BENCH_") {
            "bench harness"
        } else {
            "enforcer"
        };
        if out
            .iter()
            .any(|m: &MapMemory| m.owner == owner && m.name == name)
        {
            continue;
        }
        out.push(MapMemory {
            owner,
            name,
            map_type: field("map_type").unwrap_or(0) as u32,
            max_entries: field("max_entries").unwrap_or(0),
            bytes,
        });
    }
    out.sort_by(|a, b| a.owner.cmp(b.owner).then(b.bytes.cmp(&a.bytes)));
    out
}

/// `VmHWM` (peak RSS) of `pid`, in kB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
