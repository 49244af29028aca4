//! The standard `process_*` metrics, read from `/proc/self`.
//!
//! Written here rather than taken from a crate: the maintained readers
//! (procfs, prometheus's process collector) either belong to the other
//! Prometheus client or pull in a large dependency for seven numbers.

use std::path::Path;

/// One reading of this process's resources.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files (`None` when unlimited).
    pub max_fds: Option<u64>,
    /// Unix time the process started, seconds (`None` when `/proc/stat`
    /// cannot be read, e.g. under systemd's `ProcSubset=pid`).
    pub start_time_seconds: Option<f64>,
    pub threads: u64,
}

/// Why `/proc` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: unexpected format")]
    Format { path: String },
}

/// The fields of `/proc/<pid>/stat` used here, in proc(5)'s numbering.
#[derive(Debug, Clone, PartialEq)]
struct Stat {
    utime_ticks: u64,
    stime_ticks: u64,
    threads: u64,
    start_ticks: u64,
    vsize_bytes: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses: the fields
/// after it are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // `after` starts at field 3 (state): field n is index n - 3.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime_ticks: field(14)?,
        stime_ticks: field(15)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        vsize_bytes: field(23)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`) from `/proc/stat`, Unix seconds.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft "Max open files" limit from `/proc/<pid>/limits`; `None`
/// when it is unlimited or absent.
fn parse_max_fds(text: &str) -> Option<u64> {
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

fn read(path: &Path) -> Result<String, ProcError> {
    std::fs::read_to_string(path).map_err(|source| ProcError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Reads this process's stats.
pub fn read_self() -> Result<ProcessStats, ProcError> {
    read_from(Path::new("/proc/self"), Path::new("/proc/stat"))
}

fn read_from(dir: &Path, proc_stat: &Path) -> Result<ProcessStats, ProcError> {
    let stat_path = dir.join("stat");
    let stat = parse_stat(&read(&stat_path)?).ok_or_else(|| ProcError::Format {
        path: stat_path.display().to_string(),
    })?;
    // Only the start time needs the boot time: without it, the rest is
    // still worth exporting.
    let btime = read(proc_stat).ok().and_then(|t| parse_btime(&t));
    let max_fds = parse_max_fds(&read(&dir.join("limits"))?);
    let fd_dir = dir.join("fd");
    let open_fds = std::fs::read_dir(&fd_dir)
        .map_err(|source| ProcError::Read {
            path: fd_dir.display().to_string(),
            source,
        })?
        .count() as u64;
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // sysconf fails with -1; Linux's USER_HZ and page size are never 0.
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let page = if page > 0 { page as u64 } else { 4096 };
    Ok(ProcessStats {
        cpu_seconds: (stat.utime_ticks + stat.stime_ticks) as f64 / ticks,
        resident_memory_bytes: stat.rss_pages.saturating_mul(page),
        virtual_memory_bytes: stat.vsize_bytes,
        open_fds,
        max_fds,
        start_time_seconds: btime.map(|b| b as f64 + stat.start_ticks as f64 / ticks),
        threads: stat.threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let line = "1234 (a) b (c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime_ticks: 250,
                stime_ticks: 50,
                threads: 7,
                start_ticks: 12345,
                vsize_bytes: 104857600,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_stat("1234 (truncated"), None);
        assert_eq!(parse_stat("1234 (x) S 1 2"), None);
    }

    #[test]
    fn parses_btime_and_limits() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(parse_max_fds(unlimited), None);
    }

    #[test]
    fn without_proc_stat_only_the_start_time_is_missing() {
        let s =
            read_from(Path::new("/proc/self"), Path::new("/nonexistent/stat")).expect("/proc/self");
        assert_eq!(s.start_time_seconds, None);
        assert!(s.threads >= 1);
    }

    #[test]
    fn reads_this_process() {
        let s = read_self().expect("/proc/self");
        assert!(s.threads >= 1);
        assert!(s.open_fds >= 3);
        assert!(s.resident_memory_bytes > 0);
        assert!(s.virtual_memory_bytes >= s.resident_memory_bytes);
        assert!(s.start_time_seconds.is_some_and(|t| t > 1_000_000_000.0));
    }
}
