//! Attaching programs to cgroups and interfaces through pinned bpf_links,
//! replacing the links of an earlier agent without a gap, and removing
//! everything.
//!
//! A cgroup link is pinned as `<links>/<program>-cg<cgroup id>`, a tcx link
//! as `<links>/tcx_egress-if<ifindex>-<encoded interface name>` (see
//! [`tcx_link_name`]). A new agent attaches its own program next to the old
//! one (cgroup links and tcx links both allow several programs per hook),
//! pins the new link under a temporary name and renames it over the old
//! pin, then detaches the old link (see [`super::detach`] for why
//! explicitly). At every instant at least one of the two programs is
//! attached.
//!
//! The agent also holds an fd of every link it pinned ([`HeldLink`]): a
//! deleted pin then no longer detaches the hook (the fd keeps the link),
//! and the coverage loop can pin it again.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, LinkOrder,
        SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions,
    },
};

use super::{
    DatapathError, PROGRAMS, ProgramKind, TCX_PROGRAM,
    carry::{self, Carried},
    detach, pinned,
};
use crate::{
    paths::PinLayout,
    scope::{CgroupTarget, InterfaceTarget},
};

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

/// What a pinned link of this agent is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkTarget {
    /// A cgroup, by id.
    Cgroup(u64),
    /// A network interface, by index.
    Interface(u32),
}

/// A link this agent attached and pinned, with an fd of its own.
#[derive(Debug)]
pub struct HeldLink {
    pub program: &'static str,
    pub target: LinkTarget,
    pub fd: OwnedFd,
}

/// The links this agent holds, by pin name.
pub type HeldLinks = BTreeMap<String, HeldLink>;

/// Staged pins are `staged-<name>`: bpffs refuses names with a dot
/// ("reserved for future extensions", bpf_lookup in
/// https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/inode.c).
pub const TEMP_PREFIX: &str = "staged-";

/// The pin name of a cgroup program's link on a cgroup.
pub fn link_name(program: &str, cgroup_id: u64) -> String {
    format!("{program}-cg{cgroup_id}")
}

/// The pin name of the tcx link on an interface. The index makes it name
/// this very device: an interface deleted and created again under the same
/// name gets a new index (the kernel allocates them cyclically), so its
/// link is attached anew instead of being "kept" while it is defunct (a
/// tcx link outlives its device, attached to nothing). The name is there
/// for people reading `enforcer status`.
pub fn tcx_link_name(iface: &InterfaceTarget) -> String {
    format!(
        "{TCX_PROGRAM}-if{}-{}",
        iface.ifindex,
        encode_ifname(&iface.name)
    )
}

/// An interface name as a pin-name part. Interface names may contain '.'
/// (`eth0.100`), which bpffs refuses in names (see [`TEMP_PREFIX`]); ASCII
/// letters, digits and '-' are kept, every other byte becomes `_xx` (two
/// hex digits), '_' included, so distinct names stay distinct.
fn encode_ifname(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
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
    /// (temporary pin, final pin, the link)
    entries: Vec<(PathBuf, PathBuf, HeldLink)>,
    /// Wanted links this agent already owns: not staged again, kept.
    kept: Vec<String>,
}

impl Staged {
    /// Renames every staged pin over its final name (detaching the link it
    /// replaces), then detaches pinned links that are no longer wanted.
    /// Entries are taken one at a time: if a rename fails, the ones not yet
    /// committed are still staged, and dropping `self` detaches them.
    /// The new links are returned to be held.
    pub fn commit(mut self) -> Result<(AttachReport, HeldLinks), DatapathError> {
        let (mut report, held) = self.rename_all()?;
        let wanted: BTreeSet<String> = report
            .kept
            .iter()
            .chain(&report.attached)
            .cloned()
            .collect();
        for entry in fs::read_dir(&self.links_dir).map_err(|e| pin_err(&self.links_dir, e))? {
            let entry = entry.map_err(|e| pin_err(&self.links_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                detach::unpin_and_detach(&entry.path()).map_err(|e| pin_err(&entry.path(), e))?;
                report.detached.push(name);
            }
        }
        Ok((report, held))
    }

    /// Renames every staged pin over its final name and nothing else: a
    /// repair of some links, which leaves every other pin as it is.
    pub fn commit_only_these(mut self) -> Result<HeldLinks, DatapathError> {
        self.rename_all().map(|(_, held)| held)
    }

    fn rename_all(&mut self) -> Result<(AttachReport, HeldLinks), DatapathError> {
        let mut report = AttachReport {
            kept: std::mem::take(&mut self.kept),
            ..AttachReport::default()
        };
        let mut held = HeldLinks::new();
        while let Some((tmp, fin, link)) = self.entries.pop() {
            // The link being replaced, held open so that it can be detached
            // right after the rename drops its pin.
            let old = fin.exists().then(|| pinned::obj_get(&fin, 0));
            if old.is_some() {
                report.replaced += 1;
            }
            if let Err(e) = fs::rename(&tmp, &fin) {
                let _ = detach::unpin_and_detach(&tmp);
                let _ = detach::detach(&link.fd);
                return Err(pin_err(&fin, format!("rename from {}: {e}", tmp.display())));
            }
            if let Some(Ok(old)) = old {
                detach::detach_logged(&old, &fin);
            }
            let name = file_name(&fin);
            report.attached.push(name.clone());
            held.insert(name, link);
        }
        Ok((report, held))
    }

    /// Detaches every staged link; the pinned ones are untouched.
    pub fn abort(mut self) {
        self.remove_staged();
    }

    fn remove_staged(&mut self) {
        for (tmp, _, link) in self.entries.drain(..) {
            if let Err(e) = detach::unpin_and_detach(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %e, "cannot remove a staged link");
            }
            // The pin was not the last reference: the held fd is.
            detach::detach_logged(&link.fd, &tmp);
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        self.remove_staged();
    }
}

/// Attaches every cgroup program to every target cgroup and the tcx
/// program to every interface, except the links in `owned` (attached by
/// this agent before and still pinned), and pins each new link under a
/// temporary name. On error nothing new stays attached.
pub fn stage(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    targets: &[CgroupTarget],
    interfaces: &[InterfaceTarget],
    owned: &HeldLinks,
) -> Result<Staged, DatapathError> {
    let mut staged = Staged::new(pins)?;
    // On error `staged` is dropped, which detaches what was attached so far.
    stage_into(ebpf, pins, targets, interfaces, owned, &mut staged)?;
    Ok(staged)
}

/// Attaches `programs` to one cgroup, pinned under temporary names: a
/// repair ([`Staged::commit_only_these`] puts them in place).
pub fn stage_cgroup(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    target: &CgroupTarget,
    programs: &[(&'static str, ProgramKind)],
) -> Result<Staged, DatapathError> {
    let mut staged = Staged::new(pins)?;
    for &(name, kind) in programs {
        let link = attach_one(ebpf, name, kind, target)?;
        stage_link(
            pins,
            &mut staged,
            link_name(name, target.id),
            link,
            name,
            LinkTarget::Cgroup(target.id),
        )?;
    }
    Ok(staged)
}

/// Attaches the tcx program to one interface, pinned under a temporary
/// name: a repair, like [`stage_cgroup`].
pub fn stage_interface(
    ebpf: &mut Ebpf,
    pins: &PinLayout,
    iface: &InterfaceTarget,
) -> Result<Staged, DatapathError> {
    let mut staged = Staged::new(pins)?;
    let link = attach_tcx(ebpf, iface)?;
    stage_link(
        pins,
        &mut staged,
        tcx_link_name(iface),
        link,
        TCX_PROGRAM,
        LinkTarget::Interface(iface.ifindex),
    )?;
    Ok(staged)
}

impl Staged {
    fn new(pins: &PinLayout) -> Result<Staged, DatapathError> {
        fs::create_dir_all(&pins.links).map_err(|e| pin_err(&pins.links, e))?;
        Ok(Staged {
            links_dir: pins.links.clone(),
            entries: Vec::new(),
            kept: Vec::new(),
        })
    }
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
    interfaces: &[InterfaceTarget],
    owned: &HeldLinks,
    staged: &mut Staged,
) -> Result<(), DatapathError> {
    let kept =
        |link_name: &str| owned.contains_key(link_name) && pins.links.join(link_name).exists();
    for target in targets {
        for &(name, kind) in PROGRAMS {
            let link_name = link_name(name, target.id);
            if kept(&link_name) {
                staged.kept.push(link_name);
                continue;
            }
            let link = attach_one(ebpf, name, kind, target)?;
            stage_link(
                pins,
                staged,
                link_name,
                link,
                name,
                LinkTarget::Cgroup(target.id),
            )?;
            tracing::debug!(program = name, cgroup = %target.path.display(), "attached");
        }
    }
    for iface in interfaces {
        let link_name = tcx_link_name(iface);
        if kept(&link_name) {
            staged.kept.push(link_name);
            continue;
        }
        let link = attach_tcx(ebpf, iface)?;
        stage_link(
            pins,
            staged,
            link_name,
            link,
            TCX_PROGRAM,
            LinkTarget::Interface(iface.ifindex),
        )?;
        tracing::debug!(program = TCX_PROGRAM, interface = %iface.name, "attached");
    }
    Ok(())
}

/// Pins a new link under its temporary name and records it, with an fd
/// of its own, in `staged`.
fn stage_link(
    pins: &PinLayout,
    staged: &mut Staged,
    link_name: String,
    link: FdLink,
    program: &'static str,
    target: LinkTarget,
) -> Result<(), DatapathError> {
    // A staged pin left by an agent that died mid-attach.
    let tmp = pins.links.join(format!("{TEMP_PREFIX}{link_name}"));
    let _ = detach::unpin_and_detach(&tmp);
    link.pin(&tmp).map_err(|e| pin_err(&tmp, chain(&e)))?;
    // aya's pinned link closes its fd when dropped: open the pin again for
    // the fd this agent keeps.
    let fd = match pinned::obj_get(&tmp, 0) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = detach::unpin_and_detach(&tmp);
            return Err(pin_err(&tmp, format!("cannot open the pinned link: {e}")));
        }
    };
    staged.entries.push((
        tmp,
        pins.links.join(link_name),
        HeldLink {
            program,
            target,
            fd,
        },
    ));
    Ok(())
}

/// Attaches the tcx program on egress of one interface and returns its
/// (unpinned) link.
fn attach_tcx(ebpf: &mut Ebpf, iface: &InterfaceTarget) -> Result<FdLink, DatapathError> {
    let err = |source| DatapathError::Program {
        name: TCX_PROGRAM,
        source,
    };
    let program = ebpf
        .program_mut(TCX_PROGRAM)
        .ok_or(err(aya::programs::ProgramError::NotLoaded))?;
    let p: &mut SchedClassifier = program.try_into().map_err(err)?;
    // After the programs already there (LinkOrder::default() appends): they
    // run first, and ours returns TCX_NEXT for what it lets through, so a
    // CNI or firewall on the same device keeps working.
    let id = p
        .attach_with_options(
            &iface.name,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| iface_err(iface, format!("attaching {TCX_PROGRAM}: {}", chain(&e))))?;
    let link: FdLink = p
        .take_link(id)
        .map_err(err)?
        .try_into()
        .map_err(|e| iface_err(iface, format!("{TCX_PROGRAM} link is not an fd link: {e}")))?;
    // aya attaches by name, looking it up again: make sure the name still
    // means the device resolved (and named in the pin) before anything was
    // attached. On a mismatch the link is dropped, which detaches it.
    match nix::net::if_::if_nametoindex(iface.name.as_str()) {
        Ok(index) if index == iface.ifindex => Ok(link),
        Ok(index) => Err(iface_err(
            iface,
            format!(
                "changed while attaching (index {} became {index})",
                iface.ifindex
            ),
        )),
        Err(e) => Err(iface_err(
            iface,
            format!("disappeared while attaching: {e}"),
        )),
    }
}

fn iface_err(iface: &InterfaceTarget, detail: String) -> DatapathError {
    DatapathError::Interface {
        name: iface.name.clone(),
        detail,
    }
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
    /// Entries in the pin directory that are not ours, left alone.
    pub foreign: Vec<String>,
}

/// Whether a pin-directory entry is a layout directory (`v<digits>`).
fn is_version_dir(name: &str) -> bool {
    name.strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes one layout directory: links first (so programs stop deciding
/// before their maps go), then maps, then the directories. Only files in
/// `links/` and `maps/` are removed; anything else stays and is reported.
fn remove_version(dir: &Path, report: &mut UninstallReport) -> Result<(), DatapathError> {
    report.links += remove_files(&dir.join("links"), detach::unpin_and_detach)?;
    report.maps += remove_files(&dir.join("maps"), |p| fs::remove_file(p))?;
    for sub in ["links", "maps"] {
        match fs::remove_dir(dir.join(sub)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(pin_err(&dir.join(sub), e)),
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(pin_err(
            dir,
            format!("{e} (it holds something that is not ours)"),
        )),
    }
}

/// What [`retire_other_versions`] did.
#[derive(Clone, Debug, Default)]
pub struct Retired {
    /// The layout directories removed (`v<layout>`).
    pub versions: Vec<String>,
    /// Counter maps pinned again under this layout, by the layout that
    /// counted into them.
    pub carried: Carried,
}

/// Retires every layout directory under the pin directory but this
/// agent's, carrying its counters first (see [`super::carry`]): they are
/// pinned again before its maps are unpinned, so they never go away.
pub fn retire_other_versions(pins: &PinLayout) -> Result<Retired, DatapathError> {
    let ours = file_name(&pins.versioned);
    let mut retired = Retired::default();
    for entry in fs::read_dir(&pins.root).map_err(|e| pin_err(&pins.root, e))? {
        let entry = entry.map_err(|e| pin_err(&pins.root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != ours && is_version_dir(&name) {
            // A number too large for a layout is a directory no agent made:
            // removed like the others, nothing carried from it.
            if let Some(layout) = name.strip_prefix('v').and_then(|n| n.parse::<u32>().ok()) {
                for (from, n) in carry::carry(pins, &entry.path(), layout) {
                    *retired.carried.entry(from).or_default() += n;
                }
            }
            remove_version(&entry.path(), &mut UninstallReport::default())?;
            retired.versions.push(name);
        }
    }
    Ok(retired)
}

/// Detaches every pinned link and removes every pinned map under `pin_dir`
/// (all layout versions), then the directory if nothing else is in it.
/// Refused while an agent holds the pin directory.
pub fn uninstall(pin_dir: &Path) -> Result<UninstallReport, DatapathError> {
    uninstall_after(pin_dir, || Ok(()))
}

/// [`uninstall`], running `before` once the pin directory is locked and
/// before anything is removed (the audit record of who uninstalls and
/// why); an error from it removes nothing. Not run when nothing is
/// installed.
pub fn uninstall_after(
    pin_dir: &Path,
    before: impl FnOnce() -> Result<(), String>,
) -> Result<UninstallReport, DatapathError> {
    let mut report = UninstallReport::default();
    if !pin_dir.exists() {
        return Ok(report);
    }
    super::bpffs::check_inside(pin_dir)?;
    let _lock = super::bpffs::PinLock::take(pin_dir)?;
    before().map_err(|detail| DatapathError::Pin {
        path: pin_dir.to_owned(),
        detail: format!("nothing removed: {detail}"),
    })?;
    report.found = true;
    for entry in fs::read_dir(pin_dir).map_err(|e| pin_err(pin_dir, e))? {
        let entry = entry.map_err(|e| pin_err(pin_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_version_dir(&name) {
            remove_version(&entry.path(), &mut report)?;
        } else {
            report.foreign.push(name);
        }
    }
    if report.foreign.is_empty() {
        fs::remove_dir(pin_dir).map_err(|e| pin_err(pin_dir, e))?;
    }
    Ok(report)
}

/// Removes every file in `dir` with `remove`.
fn remove_files(
    dir: &Path,
    remove: impl Fn(&Path) -> io::Result<()>,
) -> Result<usize, DatapathError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(pin_err(dir, e)),
    };
    let mut n = 0;
    for entry in entries {
        let path = entry.map_err(|e| pin_err(dir, e))?.path();
        remove(&path).map_err(|e| pin_err(&path, e))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ifindex: u32) -> InterfaceTarget {
        InterfaceTarget {
            name: name.into(),
            ifindex,
        }
    }

    #[test]
    fn tcx_link_names_are_valid_pin_names_and_distinct() {
        let names = [
            ("eth1", "tcx_egress-if3-eth1"),
            ("eth0.100", "tcx_egress-if3-eth0_2e100"),
            ("eth0_2e100", "tcx_egress-if3-eth0_5f2e100"),
            ("veth-a@b", "tcx_egress-if3-veth-a_40b"),
            ("é", "tcx_egress-if3-_c3_a9"),
        ];
        for (name, pin) in names {
            let n = tcx_link_name(&iface(name, 3));
            assert_eq!(n, pin);
            assert!(!n.contains('.') && !n.contains('/'), "bpffs refuses {n:?}");
            assert!(n.len() <= 255, "a file name");
        }
        assert_ne!(
            tcx_link_name(&iface("eth1", 3)),
            tcx_link_name(&iface("eth1", 4)),
            "a re-created interface gets its own link"
        );
    }
}
