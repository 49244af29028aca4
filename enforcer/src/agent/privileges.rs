//! Least privilege: once the datapath is loaded, attached and pinned and
//! every socket is bound, the agent keeps only the capabilities that what
//! it still does needs, and sets `PR_SET_NO_NEW_PRIVS`.
//!
//! What it still does after start: map updates through the fds it holds
//! (reloads, mode changes, overrides), `BPF_PROG_QUERY` and
//! `BPF_LINK_CREATE` on scope cgroups and interfaces (the coverage loop's
//! repairs, and reloads that add scope entries), `BPF_OBJ_PIN`,
//! `BPF_OBJ_GET` and `BPF_LINK_DETACH` in its own pin directory, reading
//! the ring buffers, and files, sockets, inotify and rtnetlink that need
//! no capability at all. [`KEPT`] is what the kernel checks for those,
//! found by experiment on kernel 6.18 with `kernel.unprivileged_bpf_disabled`
//! set; `docs/capabilities.md` gives each kernel check. Kernels that still
//! check that sysctl on every `bpf()` command (before 6.5) also need
//! `CAP_BPF`, which a probe finds out just before the drop.
//!
//! Capabilities, the bounding set and no_new_privs belong to each thread,
//! not to the process: `capset(2)` and `PR_CAPBSET_DROP` change the calling
//! thread only, and a thread created later copies its creator's. So the
//! drop happens when the start-up runtime has been shut down and the
//! process has one thread left ([`drop_after_start`] refuses otherwise);
//! every thread of the serving runtime is then created from that thread.
//! The result is read back from `/proc/self/task/*/status`, every thread,
//! and a mismatch is an error: the agent never claims a set it does not
//! run with.

use std::{fs, path::Path};

use anyhow::{Context as _, bail};
use caps::{CapSet, Capability, CapsHashSet};

pub use crate::status::Privileges;

/// The capabilities the running agent keeps, each with the reason
/// (`docs/capabilities.md` has the kernel checks).
///
/// Not `CAP_BPF`: on the kernels the project supports (6.6 and later, for
/// tcx), `kernel.unprivileged_bpf_disabled` is checked only where maps are
/// created and programs loaded, which the agent does at start only.
pub const KEPT: &[(Capability, &str)] = &[(
    Capability::CAP_NET_ADMIN,
    "BPF_PROG_QUERY (bpf_net_capable) and BPF_LINK_CREATE of the cgroup skb program \
     (bpf_prog_attach_check_attach_type): coverage repairs and reloads that add scope entries",
)];

/// The kept capabilities as a set, with `CAP_BPF` when this kernel needs
/// it for the commands the agent still makes ([`bpf_needs_cap_bpf`]).
fn kept_with(cap_bpf: bool) -> CapsHashSet {
    let mut set: CapsHashSet = KEPT.iter().map(|&(c, _)| c).collect();
    if cap_bpf {
        set.insert(Capability::CAP_BPF);
    }
    set
}

fn kept() -> CapsHashSet {
    kept_with(false)
}

/// A set as a `/proc` capability mask.
fn mask_of(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// The kept capabilities ([`KEPT`]) as a `/proc` capability mask.
pub fn kept_mask() -> u64 {
    mask_of(&kept())
}

/// Names, in capability-number order (the order `/proc` and `capsh` use).
fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<Capability> = set.iter().copied().collect();
    v.sort_by_key(Capability::index);
    v.iter().map(ToString::to_string).collect()
}

/// Checks, before anything touches the kernel, that the drop after start
/// can succeed: every kept capability is permitted (a service manager's
/// bounding set may lack one), and the bounding set can be reduced
/// (`CAP_SETPCAP`, unless it holds nothing more than [`KEPT`] already).
/// A start that could not drop would otherwise attach and then refuse.
pub fn preflight() -> anyhow::Result<()> {
    let permitted = caps::read(None, CapSet::Permitted).context("reading the permitted set")?;
    let missing: CapsHashSet = kept().difference(&permitted).copied().collect();
    if !missing.is_empty() {
        bail!(
            "the running agent needs {} and its permitted set lacks it (see docs/capabilities.md)",
            names(&missing).join(", ")
        );
    }
    let extra = bounding_extra(kept_mask())?;
    let effective = caps::read(None, CapSet::Effective).context("reading the effective set")?;
    if !extra.is_empty() && !effective.contains(&Capability::CAP_SETPCAP) {
        bail!(
            "cannot drop capabilities after start: the bounding set holds {} more than the agent keeps, \
             and dropping them needs CAP_SETPCAP, which the agent lacks (see docs/capabilities.md)",
            extra.len()
        );
    }
    Ok(())
}

/// Capability numbers in this thread's bounding set beyond `keep` (the
/// kernel's own count: `cap_last_cap`, which may know capabilities the
/// `caps` crate does not).
fn bounding_extra(keep: u64) -> anyhow::Result<Vec<u32>> {
    let last = last_cap()?;
    let mut extra = Vec::new();
    for index in 0..=last {
        if keep & (1 << index) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ reads one flag of this thread.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(index), 0, 0, 0) };
        match rc {
            1 => extra.push(index),
            0 => {}
            _ => {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("PR_CAPBSET_READ {index}"));
            }
        }
    }
    Ok(extra)
}

/// The highest capability number this kernel knows.
fn last_cap() -> anyhow::Result<u32> {
    let path = "/proc/sys/kernel/cap_last_cap";
    let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let last: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{path}: {text:?} is not a number"))?;
    // Masks are 64 bits wide in /proc.
    Ok(last.min(63))
}

/// Whether this kernel refuses `bpf()` commands on objects the agent
/// holds without `CAP_BPF`: since Linux 6.5 `kernel.unprivileged_bpf_disabled`
/// is checked only where maps are created and programs loaded, before
/// that on every command. Found out rather than guessed from a version
/// (distributions backport): a thread of its own lowers its effective set
/// to [`KEPT`] and opens a pinned map of the datapath, then exits.
fn bpf_needs_cap_bpf(pin_dir: &Path) -> anyhow::Result<bool> {
    let pin_dir = pin_dir.to_owned();
    let probe = std::thread::Builder::new()
        .name("cap-probe".into())
        .spawn(move || -> anyhow::Result<bool> {
            caps::set(None, CapSet::Effective, &kept())
                .context("lowering the probe thread's effective set")?;
            match crate::datapath::open_pinned(&pin_dir, enforcer_common::layout::CONFIG) {
                Ok(_) => Ok(false),
                Err(crate::datapath::DatapathError::Permission { .. }) => Ok(true),
                Err(e) => Err(anyhow::anyhow!("probing bpf() without CAP_BPF: {e}")),
            }
        })
        .context("starting the capability probe thread")?;
    probe
        .join()
        .map_err(|_| anyhow::anyhow!("the capability probe thread panicked"))?
}

/// Waits (briefly) until this process has one thread: a joined thread may
/// still be listed for a moment while the kernel tears it down.
fn wait_single_thread() -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let threads = task_ids()?;
        if threads.len() == 1 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "cannot drop capabilities: {} threads run, and capabilities are per thread (one is needed)",
                threads.len()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Drops every capability but [`KEPT`] (and `CAP_BPF` where the kernel
/// needs it, see [`bpf_needs_cap_bpf`]) from the effective, permitted,
/// inheritable, ambient and bounding sets, sets no_new_privs, and reads
/// the result back from every thread. Must run with one thread left.
pub fn drop_after_start(pin_dir: &Path) -> anyhow::Result<Privileges> {
    // Before anything changes: with other threads running, change nothing.
    if task_ids()?.len() != 1 {
        wait_single_thread()?;
    }
    let cap_bpf = bpf_needs_cap_bpf(pin_dir)?;
    if cap_bpf {
        tracing::info!(
            "this kernel checks kernel.unprivileged_bpf_disabled on every bpf() command: keeping CAP_BPF"
        );
    }
    wait_single_thread()?;
    let kept = kept_with(cap_bpf);
    let keep = mask_of(&kept);
    // Bounding first: dropping from it needs CAP_SETPCAP in the effective
    // set, which the capset below removes.
    let last = last_cap()?;
    for index in bounding_extra(keep)? {
        // SAFETY: PR_CAPBSET_DROP changes one flag of this thread.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(index), 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("dropping capability {index} from the bounding set"));
        }
    }
    caps::clear(None, CapSet::Ambient).context("clearing the ambient set")?;
    caps::clear(None, CapSet::Inheritable).context("clearing the inheritable set")?;
    // Effective before permitted: the effective set must stay a subset of
    // the permitted one at every capset.
    caps::set(None, CapSet::Effective, &kept).context("setting the effective set")?;
    caps::set(None, CapSet::Permitted, &kept).context("setting the permitted set")?;
    nix::sys::prctl::set_no_new_privs().context("setting no_new_privs")?;

    let expected = Expected {
        effective: keep,
        permitted: keep,
        bounding: keep & mask_upto(last),
    };
    let threads_checked = verify_all_threads(&expected)?;
    Ok(Privileges {
        effective: names(&kept),
        ambient_cleared: true,
        no_new_privs: true,
        threads_checked,
    })
}

/// Bits 0..=last.
fn mask_upto(last: u32) -> u64 {
    if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    }
}

/// The sets every thread must show.
struct Expected {
    effective: u64,
    permitted: u64,
    bounding: u64,
}

/// The thread ids of this process.
fn task_ids() -> anyhow::Result<Vec<String>> {
    let dir = Path::new("/proc/self/task");
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        ids.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(ids)
}

/// The capability fields and no_new_privs of one `/proc/.../status`.
#[derive(Debug, PartialEq, Eq)]
pub struct ThreadPrivileges {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// Parses the `Cap*:` and `NoNewPrivs:` lines of a `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<ThreadPrivileges> {
    let hex = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    let nnp = text
        .lines()
        .find_map(|l| l.strip_prefix("NoNewPrivs:"))
        .map(|v| v.trim() == "1")?;
    Some(ThreadPrivileges {
        inheritable: hex("CapInh:")?,
        permitted: hex("CapPrm:")?,
        effective: hex("CapEff:")?,
        bounding: hex("CapBnd:")?,
        ambient: hex("CapAmb:")?,
        no_new_privs: nnp,
    })
}

/// Reads every thread's sets back; an error names the first thread that
/// differs. Returns how many threads were checked.
fn verify_all_threads(expected: &Expected) -> anyhow::Result<usize> {
    let ids = task_ids()?;
    for id in &ids {
        let path = format!("/proc/self/task/{id}/status");
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let got = parse_status(&text).with_context(|| format!("{path}: no capability fields"))?;
        let want = ThreadPrivileges {
            inheritable: 0,
            permitted: expected.permitted,
            effective: expected.effective,
            bounding: expected.bounding,
            ambient: 0,
            no_new_privs: true,
        };
        if got != want {
            bail!("thread {id} runs with {got:x?} after the drop; expected {want:x?}");
        }
    }
    Ok(ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tenforcer\nCapInh:\t0000000000000000\nCapPrm:\t0000008000001000\n\
                    CapEff:\t0000008000001000\nCapBnd:\t0000008000001000\nCapAmb:\t0000000000000000\n\
                    NoNewPrivs:\t1\nSeccomp:\t0\n";
        let p = parse_status(text).expect("parsed");
        assert_eq!(p.effective, 0x80_0000_1000);
        assert_eq!(p.bounding, 0x80_0000_1000);
        assert!(p.no_new_privs);
        assert!(parse_status("Name:\tx\n").is_none());
    }

    #[test]
    fn kept_mask_matches_the_names() {
        let mask = kept_mask();
        for &(c, why) in KEPT {
            assert_ne!(mask & c.bitmask(), 0);
            assert!(!why.is_empty());
        }
        assert_eq!(mask.count_ones() as usize, KEPT.len());
    }

    /// docs/capabilities.md's table of kept capabilities is this list.
    #[test]
    fn the_document_lists_the_kept_set() {
        let doc = include_str!("../../../docs/capabilities.md");
        let section = doc
            .split("## What the agent keeps")
            .nth(1)
            .and_then(|s| s.split("\n#").next())
            .expect("the section");
        let documented: Vec<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `CAP_"))
            .filter_map(|l| l.split('`').next())
            .map(|n| format!("CAP_{n}"))
            .collect();
        assert_eq!(documented, names(&kept()));
        for &(c, _) in KEPT {
            assert!(section.contains(&format!("| `{c}` | {} |", c.index())));
        }
    }

    /// With more than one thread, nothing is changed and the error says why.
    #[test]
    fn refuses_to_drop_with_other_threads_running() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let before = caps::read(None, CapSet::Effective).expect("capget");
        let e = drop_after_start(Path::new("/nonexistent")).expect_err("two threads at least");
        assert!(format!("{e:#}").contains("per thread"), "{e:#}");
        assert_eq!(caps::read(None, CapSet::Effective).expect("capget"), before);
        drop(tx);
        let _ = other.join();
    }

    #[test]
    fn masks_up_to_the_last_capability() {
        assert_eq!(mask_upto(40), 0x1ff_ffff_ffff);
        assert_eq!(mask_upto(63), u64::MAX);
    }
}
