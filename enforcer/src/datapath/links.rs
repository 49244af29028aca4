//! Attaching programs to cgroups through pinned bpf_links, replacing the
//! links of an earlier agent without a gap, and removing everything.
//!
//! A link is pinned as `<links>/<program>-cg<cgroup id>`. A new agent
//! attaches its own program next to the old one (links always allow
//! several programs per cgroup and hook), pins
//! the new link under a temporary name and renames it over the old pin: the
//! rename drops the old pin, which detaches the old link. At every instant
//! at least one of the two programs is attached.

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::FdLink},
};

use super::{DatapathError, PROGRAMS, ProgramKind};
use crate::{paths::PinLayout, scope::CgroupTarget};

/// What an attach did.
#[derive(Clone, Debug, Default)]
pub struct AttachReport {
    /// Links attached by this commit (pin names).
    pub attached: Vec<String>,
    /// Links this agent had attached before and still wants.
    pub kept: Vec<String>,
    /// How many of them replaced a link pinned by an earlier agent.
    pub replaced: usize,
    /// Links of an earlier agent removed because the scope no longer has them.
    pub detached: Vec<String>,
}

/// Staged pins are `staged-<name>`: bpffs refuses names with a dot
/// ("reserved for future extensions", bpf_lookup in
/// https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/inode.c).
const TEMP_PREFIX: &str = "staged-";

fn link_name(program: &str, cgroup_id: u64) -> String {
    format!("{program}-cg{cgroup_id}")
}

fn pin_err(path: &Path, detail: impl std::fmt::Display) -> DatapathError {
    DatapathError::Pin {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// An error and its sources on one line (aya's pin errors keep the errno
/// in the source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Links attached and pinned under temporary names: live, but not yet
/// replacing the links of an earlier agent. [`Staged::commit`] makes them
/// the pinned links; [`Staged::abort`] (or dropping) detaches them again.
#[must_use = "staged links are detached when dropped"]
pub struct Staged {
    links_dir: PathBuf,
    /// (temporary pin, final pin)
    entries: Vec<(PathBuf, PathBuf)>,
    /// Wanted links this agent already owns: not staged again, kept.
    kept: Vec<String>,
}

impl Staged {
    /// Renames every staged pin over its final name (detaching the link it
    /// replaces), then detaches pinned links that are no longer wanted.
    pub fn commit(mut self) -> Result<AttachReport, DatapathError> {
        let entries = std::mem::take(&mut self.entries);
        let mut report = AttachReport {
            kept: std::mem::take(&mut self.kept),
            ..AttachReport::default()
        };
        let mut wanted: BTreeSet<String> = report.kept.iter().cloned().collect();
        for (tmp, fin) in &entries {
            if fin.exists() {
                report.replaced += 1;
            }
            fs::rename(tmp, fin)
                .map_err(|e| pin_err(fin, format!("rename from {}: {e}", tmp.display())))?;
            let name = file_name(fin);
            wanted.insert(name.clone());
            report.attached.push(name);
        }
        for entry in fs::read_dir(&self.links_dir).map_err(|e| pin_err(&self.links_dir, e))? {
            let entry = entry.map_err(|e| pin_err(&self.links_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                fs::remove_file(entry.path()).map_err(|e| pin_err(&entry.path(), e))?;
                report.detached.push(name);
            }
        }
        Ok(report)
    }

    /// Detaches every staged link; the pinned ones are untouched.
    pub fn abort(mut self) {
        self.remove_staged();
    }

    fn remove_staged(&mut self) {
        for (tmp, _) in self.entries.drain(..) {
            if let Err(e) = fs::remove_file(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a staged link");
            }
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.remove_staged();
    }
}

/// Attaches every program to every target, except the links in `owned`
/// (attached by this agent before and still pinned), and pins each new link
/// under a temporary name. On error nothing new stays attached.
pub fn stage(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    targets: &[CgroupTarget],
    owned: &BTreeSet<String>,
) -> Result<Staged, DatapathError> {
    fs::create_dir_all(&pins.links).map_err(|e| pin_err(&pins.links, e))?;
    let mut staged = Staged {
        links_dir: pins.links.clone(),
        entries: Vec::new(),
        kept: Vec::new(),
    };
    // On error `staged` is dropped, which detaches what was attached so far.
    stage_into(ebpf, pins, targets, owned, &mut staged)?;
    Ok(staged)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Attaches and pins, recording each pin in `staged` as soon as it exists.
fn stage_into(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    targets: &[CgroupTarget],
    owned: &BTreeSet<String>,
    staged: &mut Staged,
) -> Result<(), DatapathError> {
    for target in targets {
        for &(name, kind) in PROGRAMS {
            let link_name = link_name(name, target.id);
            if owned.contains(&link_name) && pins.links.join(&link_name).exists() {
                staged.kept.push(link_name);
                continue;
            }
            let link = attach_one(ebpf, name, kind, target)?;
            // A staged pin left by an agent that died mid-attach.
            let tmp = pins.links.join(format!("{TEMP_PREFIX}{link_name}"));
            let _ = fs::remove_file(&tmp);
            link.pin(&tmp).map_err(|e| pin_err(&tmp, chain(&e)))?;
            staged.entries.push((tmp, pins.links.join(link_name)));
            tracing::debug!(program = name, cgroup = %target.path.display(), "attached");
        }
    }
    Ok(())
}

/// Attaches one program to one cgroup and returns its (unpinned) link.
fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    kind: ProgramKind,
    target: &CgroupTarget,
) -> Result<FdLink, DatapathError> {
    let err = |source| DatapathError::Program { name, source };
    let program = ebpf
        .program_mut(name)
        .ok_or(err(aya::programs::ProgramError::NotLoaded))?;
    // bpf_link cgroup attachments always coexist with other programs (the
    // kernel attaches links with BPF_F_ALLOW_MULTI semantics and rejects the
    // flag itself with EINVAL, see cgroup_bpf_link_attach in
    // https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/cgroup.c);
    // aya passes the mode as link_create flags, so it must be Single (0).
    let link: FdLink = match kind {
        ProgramKind::SockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            let id = p
                .attach(&target.dir, CgroupAttachMode::Single)
                .map_err(err)?;
            p.take_link(id).map_err(err)?.try_into()
        }
        ProgramKind::SkbEgress => {
            let p: &mut CgroupSkb = program.try_into().map_err(err)?;
            let id = p
                .attach(
                    &target.dir,
                    CgroupSkbAttachType::Egress,
                    CgroupAttachMode::Single,
                )
                .map_err(err)?;
            p.take_link(id).map_err(err)?.try_into()
        }
    }
    .map_err(|e| pin_err(&target.path, format!("{name} link is not an fd link: {e}")))?;
    Ok(link)
}

/// What `uninstall` removed.
#[derive(Clone, Debug, Default)]
pub struct UninstallReport {
    pub links: usize,
    pub maps: usize,
    /// The pin directory existed.
    pub found: bool,
}

/// Detaches every pinned link and removes every pinned map under `pin_dir`
/// (all layout versions), then the directory itself.
pub fn uninstall(pin_dir: &Path) -> Result<UninstallReport, DatapathError> {
    let mut report = UninstallReport::default();
    let versions = match fs::read_dir(pin_dir) {
        Ok(v) => v,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(pin_err(pin_dir, e)),
    };
    report.found = true;
    for version in versions {
        let version = version.map_err(|e| pin_err(pin_dir, e))?.path();
        // Links first: programs stop deciding before their maps go away.
        report.links += remove_files(&version.join("links"))?;
        report.maps += remove_files(&version.join("maps"))?;
    }
    fs::remove_dir_all(pin_dir).map_err(|e| pin_err(pin_dir, e))?;
    Ok(report)
}

fn remove_files(dir: &Path) -> Result<usize, DatapathError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(pin_err(dir, e)),
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.map_err(|e| pin_err(dir, e))?.path();
        fs::remove_file(&path).map_err(|e| pin_err(&path, e))?;
        n += 1;
    }
    Ok(n)
}
