//! The datapath from the agent's side: load it (or adopt what is pinned),
//! write policy slots, attach to cgroups and interfaces, read counters,
//! uninstall; and whether a cgroup is covered, asked of the kernel
//! ([`guard`]).
//!
//! Invariants kept here (docs/architecture.md, "Invariants"):
//! - enforcement outlives the agent: maps and links are pinned under a
//!   versioned directory on bpffs, and `uninstall` is the only thing that
//!   removes them;
//! - no decision sees half a policy: slots are written while inactive,
//!   verified, then flipped with one word;
//! - bad input never changes what is in force: anything that fails before
//!   the flip leaves the active slot as it was, and a failed first install
//!   removes what it created.

mod bpffs;
mod buffer;
mod carry;
mod compat;
pub mod counters;
mod detach;
pub mod diagnostics;
pub mod explain;
mod geo;
mod geo4;
mod geo6;
pub mod guard;
mod links;
mod pinned;
mod query;
pub mod scopes;
mod slots;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError},
    programs::{CgroupSkb, CgroupSockAddr, Program, ProgramError, SchedClassifier},
};
use enforcer_common::{
    AYA_LOGS, CFG_ALLOWED_SAMPLE, CFG_EVENT_BURST, CFG_EVENT_RATE, CFG_GENERATION, CFG_LAYOUT,
    CFG_MODE, CFG_OVERRIDES, CFG_SLOT, CONFIG, LAYOUT_VERSION, MODE_OVERRIDES,
    MODE_OVERRIDES_CAPACITY, Mode, cfg_mode,
};

pub use self::{
    bpffs::BpffsError,
    carry::Carried,
    links::TEMP_PREFIX as STAGED_LINK_PREFIX,
    links::{
        AttachReport, HeldLink, HeldLinks, LinkTarget, Retired, Staged, UninstallReport, link_name,
        tcx_link_name, uninstall, uninstall_after,
    },
    pinned::{Access, open_map},
    slots::{SlotReport, check_capacity},
};
use crate::{
    paths::PinLayout,
    policy::CompiledPolicy,
    scope::{CgroupTarget, InterfaceTarget},
};

/// The compiled datapath object, built by build.rs with aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

/// The benchmark's own object (`enforcer-ebpf/src/bench.rs`), built beside
/// [`OBJECT`] from the same decision code. Only `ee-bench` loads it; the
/// agent binary never references it, so the linker leaves it out.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-bench"));

/// How a cgroup program is loaded and attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// cgroup sock_addr (connect4/6, sendmsg4/6); the attach type comes
    /// from the ELF section.
    SockAddr,
    /// cgroup_skb, attached on egress.
    SkbEgress,
}

/// The cgroup programs (their names are also the link-name prefix).
pub const PROGRAMS: &[(&str, ProgramKind)] = &[
    ("connect4", ProgramKind::SockAddr),
    ("connect6", ProgramKind::SockAddr),
    ("sendmsg4", ProgramKind::SockAddr),
    ("sendmsg6", ProgramKind::SockAddr),
    ("skb_egress", ProgramKind::SkbEgress),
];

/// The tcx program for forwarded traffic, attached on egress of each
/// configured interface (also the link-name prefix).
pub const TCX_PROGRAM: &str = "tcx_egress";

/// An error in the datapath. Each says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the datapath object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("map {0} is missing from the datapath object (a build problem)")]
    MissingMap(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "maps pinned under {path} have layout version {found}, this agent uses {LAYOUT_VERSION}; \
         run `enforcer uninstall` or choose another agent.pin_dir"
    )]
    Layout { path: PathBuf, found: u32 },
    #[error("{what}: {need} entries do not fit the map, which holds {capacity}")]
    Capacity {
        what: String,
        need: usize,
        capacity: u32,
    },
    #[error("verifying slot {slot} after writing it: {detail}")]
    Verify { slot: u32, detail: String },
    #[error("{path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("interface {name:?}: {detail}")]
    Interface { name: String, detail: String },
    #[error(
        "pinned map {path} does not match this agent's layout: {detail}; run `enforcer uninstall`"
    )]
    Incompatible { path: PathBuf, detail: String },
    #[error("no datapath is pinned under {0} (is the agent installed? see `enforcer run`)")]
    NotInstalled(PathBuf),
    #[error(
        "{path}: permission denied; reading the pinned maps needs root (CAP_BPF); \
         members of the control group can ask the running agent instead"
    )]
    Permission { path: PathBuf },
}

pub fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// The settings outside the slots, read back (see [`Datapath::unslotted`]).
#[derive(Clone, Debug)]
pub struct Unslotted {
    slot: u32,
    overrides: Vec<(u64, Mode)>,
    event_rate: u32,
    event_burst: u32,
    allowed_sample: bool,
}

/// A loaded (or adopted) datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinLayout,
    adopted: bool,
    /// Links this process attached and pinned, by pin name, each with an
    /// fd of its own.
    held: HeldLinks,
    /// What this process created, so a failed first install removes that
    /// and only that: the pin directory itself, or this layout's directory.
    created_root: bool,
    created_versioned: bool,
    /// One agent per pin directory.
    _lock: bpffs::PinLock,
}

impl Datapath {
    /// Loads the datapath, adopting the maps pinned under `pin_dir` when
    /// there are some (counters continue), checks them against the layout,
    /// and loads its programs into the kernel. Nothing is attached yet.
    pub fn load(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        let pins = PinLayout::new(pin_dir);
        bpffs::ensure(&pins.root)?;
        let created_root = bpffs::create_dirs(&pins.root)?;
        let lock = match bpffs::PinLock::take(&pins.root) {
            Ok(l) => l,
            Err(e) => {
                if created_root {
                    remove_pins(&pins.root);
                }
                return Err(e.into());
            }
        };
        let created_versioned = !pins.versioned.exists();
        let result = bpffs::create_dirs(&pins.maps)
            .map_err(DatapathError::from)
            .and_then(|_| load_object(&pins));
        match result {
            Ok((ebpf, fresh)) => Ok(Datapath {
                ebpf,
                pins,
                adopted: !fresh,
                held: HeldLinks::new(),
                created_root,
                created_versioned,
                _lock: lock,
            }),
            Err(e) => {
                discard(&pins, created_root, created_versioned);
                Err(e)
            }
        }
    }

    /// After a failed first install: remove every pin this process created.
    pub fn discard_if_new(&mut self) {
        discard(&self.pins, self.created_root, self.created_versioned);
    }

    /// Detaches and removes what agents with another layout version left in
    /// the pin directory: their links would go on deciding with their own
    /// maps (the kernel refuses when any attached program refuses). Their
    /// counters are carried first (see [`carry`]), so they continue.
    pub fn retire_other_versions(&mut self) -> Result<Retired, DatapathError> {
        links::retire_other_versions(&self.pins)
    }

    /// Whether maps pinned by an earlier agent were adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// One loaded program by name (see [`PROGRAMS`]), for running it with
    /// `BPF_PROG_TEST_RUN` (kernel unit tests, benchmarks). Shared access
    /// only: attaching needs `&mut`, so nothing can be attached through it.
    pub fn program(&self, name: &str) -> Option<&Program> {
        self.ebpf.program(name)
    }

    fn config_word(&mut self, index: u32) -> Result<u32, DatapathError> {
        config_word(&mut self.ebpf, index)
    }

    fn set_config_word(&mut self, index: u32, value: u32) -> Result<(), DatapathError> {
        set_config_word(&mut self.ebpf, index, value)
    }

    /// The slot the datapath currently decides with.
    pub fn active_slot(&mut self) -> Result<u32, DatapathError> {
        Ok(self.config_word(CFG_SLOT)? & 1)
    }

    /// The global mode in force (the active slot's).
    pub fn mode(&mut self) -> Result<Option<Mode>, DatapathError> {
        let slot = self.active_slot()?;
        Ok(Mode::from_raw(self.config_word(cfg_mode(slot))?))
    }

    /// Bumps the policy generation: every cached per-socket verdict is
    /// decided again (after an override change, say). Returns the new one.
    pub fn bump_generation(&mut self) -> Result<u32, DatapathError> {
        let g = self.config_word(CFG_GENERATION)?.wrapping_add(1);
        self.set_config_word(CFG_GENERATION, g)?;
        Ok(g)
    }

    /// Sets the global mode without a policy change: both slots' mode words
    /// (each a one-word store), then bumps the generation so cached verdicts
    /// are re-decided. Returns the new generation.
    pub fn set_mode(&mut self, mode: Mode) -> Result<u32, DatapathError> {
        for word in CFG_MODE {
            self.set_config_word(word, mode as u32)?;
        }
        self.bump_generation()
    }

    fn overrides_map(&mut self) -> Result<HashMap<&mut MapData, u64, u32>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(MODE_OVERRIDES)
            .ok_or(DatapathError::MissingMap(MODE_OVERRIDES))?;
        HashMap::try_from(map).map_err(map_err(MODE_OVERRIDES))
    }

    /// What a policy load writes outside the slots (the per-cgroup mode
    /// overrides, the event rate), as it is now, so a load that fails
    /// before its flip can put it back with [`Datapath::restore`].
    pub fn unslotted(&mut self) -> Result<Unslotted, DatapathError> {
        let overrides = self
            .overrides_map()?
            .iter()
            .filter_map(Result::ok)
            .filter_map(|(id, raw)| Mode::from_raw(raw).map(|m| (id, m)))
            .collect();
        Ok(Unslotted {
            slot: self.active_slot()?,
            overrides,
            event_rate: self.config_word(CFG_EVENT_RATE)?,
            event_burst: self.config_word(CFG_EVENT_BURST)?,
            allowed_sample: self.config_word(CFG_ALLOWED_SAMPLE)? != 0,
        })
    }

    /// Puts back what [`Datapath::unslotted`] read, unless the slot flipped
    /// since (then the new policy is in force, and its settings with it).
    /// Returns whether it restored.
    pub fn restore(&mut self, before: &Unslotted) -> Result<bool, DatapathError> {
        if self.active_slot()? != before.slot {
            return Ok(false);
        }
        self.set_overrides(&before.overrides)?;
        self.set_event_limits(before.event_rate, before.event_burst)?;
        self.set_allowed_sample(before.allowed_sample)?;
        Ok(true)
    }

    /// Turns the kernel's sample of allowed destinations
    /// (`ALLOWED_SAMPLE`) on or off. Off, the map keeps what it holds
    /// but no decision updates it.
    pub fn set_allowed_sample(&mut self, on: bool) -> Result<(), DatapathError> {
        self.set_config_word(CFG_ALLOWED_SAMPLE, u32::from(on))
    }

    /// Sets the events' per-CPU rate and burst (rate 0: no events).
    pub fn set_event_limits(&mut self, rate_per_cpu: u32, burst: u32) -> Result<(), DatapathError> {
        self.set_config_word(CFG_EVENT_BURST, burst)?;
        self.set_config_word(CFG_EVENT_RATE, rate_per_cpu)
    }

    /// Makes `MODE_OVERRIDES` hold exactly `overrides` (cgroup id, mode), then
    /// records how many there are so the datapath walks the cgroup tree only
    /// when there is something to find.
    pub fn set_overrides(&mut self, overrides: &[(u64, Mode)]) -> Result<(), DatapathError> {
        if overrides.len() > MODE_OVERRIDES_CAPACITY as usize {
            return Err(DatapathError::Capacity {
                what: "per-cgroup mode overrides".into(),
                need: overrides.len(),
                capacity: MODE_OVERRIDES_CAPACITY,
            });
        }
        let wanted: BTreeMap<u64, u32> = overrides.iter().map(|(id, m)| (*id, *m as u32)).collect();
        let stale: Vec<u64> = self
            .overrides_map()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(k))
            .collect();
        // The count is raised before the map changes and lowered after, so
        // the walk is never skipped while an entry is in the map.
        self.set_config_word(CFG_OVERRIDES, overrides.len().max(1) as u32)?;
        let mut by_cg = self.overrides_map()?;
        for (id, mode) in &wanted {
            by_cg.insert(id, mode, 0).map_err(map_err(MODE_OVERRIDES))?;
        }
        for id in stale {
            by_cg.remove(&id).map_err(map_err(MODE_OVERRIDES))?;
        }
        self.set_config_word(CFG_OVERRIDES, overrides.len() as u32)
    }

    /// Writes `policy` and `mode` into the inactive slot (the tables as a
    /// diff against what that slot holds), verifies them, then makes it the
    /// active slot: policy and mode change in the same one-word flip.
    pub fn install(
        &mut self,
        policy: &CompiledPolicy,
        mode: Mode,
    ) -> Result<SlotReport, DatapathError> {
        slots::check_capacity(policy)?;
        let target = 1 - self.active_slot()?;
        let contents = slots::SlotContents::new(policy)?;
        let mut report = slots::write(&mut self.ebpf, target, &contents)?;
        self.set_config_word(cfg_mode(target), mode as u32)?;
        let verifying = std::time::Instant::now();
        slots::verify(&mut self.ebpf, target, &contents)?;
        report.geo_verify_seconds = verifying.elapsed().as_secs_f64();
        let written = self.config_word(cfg_mode(target))?;
        if written != mode as u32 {
            return Err(DatapathError::Verify {
                slot: target,
                detail: format!("mode word is {written}, expected {}", mode as u32),
            });
        }
        // The flip: one aligned 32-bit store into an array map.
        self.set_config_word(CFG_SLOT, target)?;
        report.generation = self.bump_generation()?;
        Ok(report)
    }

    /// Attaches every cgroup program to every target cgroup, and the tcx
    /// program to every interface, under temporary pins, except where this
    /// agent's own link is already in place; see [`Staged`].
    pub fn stage(
        &mut self,
        targets: &[CgroupTarget],
        interfaces: &[InterfaceTarget],
    ) -> Result<Staged, DatapathError> {
        links::stage(&mut self.ebpf, &self.pins, targets, interfaces, &self.held)
    }

    /// Commits staged links and holds them as this agent's own; links it
    /// held that are no longer wanted were detached by the commit.
    pub fn commit(&mut self, staged: Staged) -> Result<AttachReport, DatapathError> {
        let (report, new) = staged.commit()?;
        let kept: BTreeSet<&String> = report.kept.iter().collect();
        self.held.retain(|name, _| kept.contains(name));
        self.held.extend(new);
        Ok(report)
    }

    /// The links this agent holds, by pin name.
    pub fn held_links(&self) -> &HeldLinks {
        &self.held
    }

    /// The kernel id of one of this agent's loaded programs.
    fn program_id(&self, name: &str) -> Result<u32, DatapathError> {
        let program = self.ebpf.program(name).ok_or(DatapathError::Program {
            name: "coverage",
            source: ProgramError::NotLoaded,
        })?;
        program
            .info()
            .map(|i| i.id())
            .map_err(|source| DatapathError::Program {
                name: "coverage",
                source,
            })
    }

    /// The cgroup programs whose link from this agent the kernel does not
    /// list on `target` (`BPF_PROG_QUERY`, the kernel's own answer).
    pub fn missing_on_cgroup(
        &self,
        target: &CgroupTarget,
    ) -> Result<Vec<(&'static str, ProgramKind)>, DatapathError> {
        use std::os::fd::AsFd as _;
        let mut missing = Vec::new();
        for &(name, kind) in PROGRAMS {
            let id = self.program_id(name)?;
            let attached = query::attached_programs(
                query::QueryTarget::Cgroup(target.dir.as_fd()),
                query_attach_type(name),
            )
            .map_err(|e| DatapathError::Pin {
                path: target.path.clone(),
                detail: format!("BPF_PROG_QUERY for {name}: {e}"),
            })?;
            if !attached.contains(&id) {
                missing.push((name, kind));
            }
        }
        Ok(missing)
    }

    /// Whether the kernel lists this agent's tcx program on egress of
    /// `iface` (by index).
    pub fn tcx_attached(&self, iface: &InterfaceTarget) -> Result<bool, DatapathError> {
        let id = self.program_id(TCX_PROGRAM)?;
        let attached = query::attached_programs(
            query::QueryTarget::Interface(iface.ifindex),
            query::BPF_TCX_EGRESS,
        )
        .map_err(|e| DatapathError::Interface {
            name: iface.name.clone(),
            detail: format!("BPF_PROG_QUERY: {e}"),
        })?;
        Ok(attached.contains(&id))
    }

    /// Attaches `programs` to one cgroup and pins them, replacing pins of
    /// the same name (a link that was detached); every other link stays
    /// as it is. Returns the pin names.
    pub fn repair_cgroup(
        &mut self,
        target: &CgroupTarget,
        programs: &[(&'static str, ProgramKind)],
    ) -> Result<Vec<String>, DatapathError> {
        let staged = links::stage_cgroup(&mut self.ebpf, &self.pins, target, programs)?;
        let new = staged.commit_only_these()?;
        let names = new.keys().cloned().collect();
        self.held.extend(new);
        Ok(names)
    }

    /// Attaches the tcx program to one interface, like [`Self::repair_cgroup`].
    pub fn repair_interface(&mut self, iface: &InterfaceTarget) -> Result<String, DatapathError> {
        let staged = links::stage_interface(&mut self.ebpf, &self.pins, iface)?;
        let new = staged.commit_only_these()?;
        let names: Vec<String> = new.keys().cloned().collect();
        self.held.extend(new);
        Ok(names.into_iter().next().unwrap_or_default())
    }

    /// Detaches and unpins this agent's links to `target` (a cgroup that
    /// was removed, an interface that was deleted: what they were attached
    /// to is gone). Returns the pin names.
    pub fn release(&mut self, target: LinkTarget) -> Vec<String> {
        let names: Vec<String> = self
            .held
            .iter()
            .filter(|(_, l)| l.target == target)
            .map(|(n, _)| n.clone())
            .collect();
        for name in &names {
            let path = self.pins.links.join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the pin of a defunct link")
                }
            }
            if let Some(link) = self.held.remove(name) {
                let _ = detach::detach(&link.fd);
            }
        }
        names
    }

    /// Pins again every held link whose pin is gone (someone deleted it:
    /// the held fd kept the link attached). Returns the pin names.
    pub fn repin_missing(&mut self) -> Result<Vec<String>, DatapathError> {
        use std::os::fd::AsFd as _;
        let mut repinned = Vec::new();
        for (name, link) in &self.held {
            let path = self.pins.links.join(name);
            if path.exists() {
                continue;
            }
            fs::create_dir_all(&self.pins.links).map_err(|e| DatapathError::Pin {
                path: self.pins.links.clone(),
                detail: e.to_string(),
            })?;
            query::obj_pin(link.fd.as_fd(), &path).map_err(|e| DatapathError::Pin {
                path: path.clone(),
                detail: format!("pinning the held link again: {e}"),
            })?;
            repinned.push(name.clone());
        }
        Ok(repinned)
    }
}

/// The attach type a program is queried at (`BPF_PROG_QUERY`).
fn query_attach_type(program: &str) -> u32 {
    match program {
        "connect4" => query::BPF_CGROUP_INET4_CONNECT,
        "connect6" => query::BPF_CGROUP_INET6_CONNECT,
        "sendmsg4" => query::BPF_CGROUP_UDP4_SENDMSG,
        "sendmsg6" => query::BPF_CGROUP_UDP6_SENDMSG,
        "skb_egress" => query::BPF_CGROUP_INET_EGRESS,
        _ => query::BPF_TCX_EGRESS,
    }
}

/// Loads the object with its maps pinned under `pins.maps` (adopting pinned
/// ones), checks them against the layout and loads every program. Returns
/// whether the maps are fresh: `CONFIG[CFG_LAYOUT]` still 0, whether just
/// created or pinned by an agent that died before writing it.
fn load_object(pins: &PinLayout) -> Result<(Ebpf, bool), DatapathError> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.maps)
        // aya-log-ebpf declares its ring unpinned: pinned here, by path,
        // like every other map (see enforcer_common::AYA_LOGS).
        .map_pin_path(AYA_LOGS, pins.maps.join(AYA_LOGS))
        .load(OBJECT)
        .map_err(DatapathError::Load)?;
    compat::check(pins)?;
    let layout = config_word(&mut ebpf, CFG_LAYOUT)?;
    let fresh = layout == 0;
    if fresh {
        set_config_word(&mut ebpf, CFG_LAYOUT, LAYOUT_VERSION)?;
    } else if layout != LAYOUT_VERSION {
        return Err(DatapathError::Layout {
            path: pins.maps.clone(),
            found: layout,
        });
    }
    for &(name, kind) in PROGRAMS {
        let err = |source| DatapathError::Program { name, source };
        let program = ebpf.program_mut(name).ok_or(err(ProgramError::NotLoaded))?;
        match kind {
            ProgramKind::SockAddr => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
                load_retrying(name, || p.load()).map_err(err)?;
            }
            ProgramKind::SkbEgress => {
                let p: &mut CgroupSkb = program.try_into().map_err(err)?;
                load_retrying(name, || p.load()).map_err(err)?;
            }
        }
    }
    // Loaded (and so verified) even when no interface is configured: a
    // datapath the kernel would refuse fails every start, not only the
    // first one that forwards.
    let err = |source| DatapathError::Program {
        name: TCX_PROGRAM,
        source,
    };
    let program = ebpf
        .program_mut(TCX_PROGRAM)
        .ok_or(err(ProgramError::NotLoaded))?;
    let p: &mut SchedClassifier = program.try_into().map_err(err)?;
    load_retrying(TCX_PROGRAM, || p.load()).map_err(err)?;
    Ok((ebpf, fresh))
}

/// How many times a program load interrupted by a signal is tried.
const LOAD_TRIES: u32 = 5;

/// `load`, tried again when `BPF_PROG_LOAD` fails with `EAGAIN`: the
/// verifier gives up with `-EAGAIN` when a signal is pending for the
/// loading thread (kernel/bpf/verifier.c, `do_check`: `if
/// (signal_pending(current)) return -EAGAIN;`), and asks for a retry. The
/// agent handles SIGHUP and SIGTERM, and a process that loads while a
/// child exits gets SIGCHLD, so a start must not fail on that. Any other
/// error, and the last try's, is returned as it is.
fn load_retrying(
    name: &str,
    load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let interrupted = |e: &ProgramError| {
        matches!(e, ProgramError::LoadError { io_error, .. }
            if io_error.kind() == std::io::ErrorKind::WouldBlock)
    };
    retry(LOAD_TRIES, interrupted, load, |tries| {
        tracing::warn!(
            program = name,
            tries,
            "the verifier was interrupted by a signal (EAGAIN); loading again"
        );
    })
}

/// Runs `f` up to `tries` times while it fails with an error `again`
/// accepts, calling `retrying` with the number of tries so far before each
/// new one; returns the first success, the first other error, or the last
/// try's error.
fn retry<E>(
    tries: u32,
    again: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<(), E>,
    mut retrying: impl FnMut(u32),
) -> Result<(), E> {
    let mut done = 1;
    loop {
        match f() {
            Err(e) if again(&e) && done < tries => {
                retrying(done);
                done += 1;
            }
            other => return other,
        }
    }
}

/// Removes what a failed first install created: the whole pin directory if
/// it made it, else this layout's directory if it made that.
fn discard(pins: &PinLayout, created_root: bool, created_versioned: bool) {
    if created_root {
        remove_pins(&pins.root);
    } else if created_versioned {
        remove_pins(&pins.versioned);
    }
}

fn config_map(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, u32>, DatapathError> {
    let map = ebpf
        .map_mut(CONFIG)
        .ok_or(DatapathError::MissingMap(CONFIG))?;
    Array::try_from(map).map_err(map_err(CONFIG))
}

fn config_word(ebpf: &mut Ebpf, index: u32) -> Result<u32, DatapathError> {
    config_map(ebpf)?.get(&index, 0).map_err(map_err(CONFIG))
}

fn set_config_word(ebpf: &mut Ebpf, index: u32, value: u32) -> Result<(), DatapathError> {
    config_map(ebpf)?
        .set(index, value, 0)
        .map_err(map_err(CONFIG))
}

/// Removes a directory this process created, with everything in it.
fn remove_pins(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(path = %dir.display(), error = %e, "cannot remove pins after a failed install");
    }
}

/// The kernel's own accounting of each pinned map's memory, in bytes, by
/// map name: the `memlock:` line of the map fd's fdinfo, which since Linux
/// 6.5 is the map's `map_mem_usage`
/// (<https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/syscall.c#L1004>).
pub fn map_memory(pin_dir: &Path) -> Result<BTreeMap<String, u64>, DatapathError> {
    let dir = PinLayout::new(pin_dir).maps;
    let io = |path: &Path, e: std::io::Error| DatapathError::Pin {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
        let path = entry.map_err(|e| io(&dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let data = MapData::from_pin(&path).map_err(|source| DatapathError::Map {
            name: "pinned map",
            source,
        })?;
        use std::os::fd::{AsFd, AsRawFd};
        let fdinfo = format!("/proc/self/fdinfo/{}", data.fd().as_fd().as_raw_fd());
        let text = fs::read_to_string(&fdinfo).map_err(|e| io(Path::new(&fdinfo), e))?;
        let bytes = text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.insert(name, bytes);
    }
    Ok(out)
}

/// The `CONFIG` words of an installed datapath, read from its pin.
#[derive(Clone, Copy, Debug)]
pub struct ConfigWords {
    pub layout: u32,
    pub slot: u32,
    pub mode: Option<Mode>,
    pub generation: u32,
}

/// Reads the `CONFIG` words of the datapath pinned under `pin_dir`.
pub fn config_words(pin_dir: &Path) -> Result<ConfigWords, DatapathError> {
    let config: Array<MapData, u32> =
        Array::try_from(open_pinned(pin_dir, CONFIG)?).map_err(map_err(CONFIG))?;
    let word = |i: u32| config.get(&i, 0).map_err(map_err(CONFIG));
    let slot = word(CFG_SLOT)? & 1;
    Ok(ConfigWords {
        layout: word(CFG_LAYOUT)?,
        slot,
        mode: Mode::from_raw(word(cfg_mode(slot))?),
        generation: word(CFG_GENERATION)?,
    })
}

/// Opens one pinned map of an installed datapath (for metrics, events,
/// `status`), read-write, without loading any program.
pub fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    open_map(pin_dir, name, Access::ReadWrite)
}

#[cfg(test)]
mod retry_tests {
    use std::io::{Error, ErrorKind};

    use super::retry;

    fn interrupted(e: &Error) -> bool {
        e.kind() == ErrorKind::WouldBlock
    }

    #[test]
    fn an_interrupted_load_is_tried_again_up_to_the_bound() {
        // Two interruptions, then success: three tries, two retries said.
        let mut results = vec![
            Err(Error::from(ErrorKind::WouldBlock)),
            Err(Error::from(ErrorKind::WouldBlock)),
            Ok(()),
        ]
        .into_iter();
        let mut said = Vec::new();
        let r = retry(
            5,
            interrupted,
            || results.next().unwrap_or(Ok(())),
            |n| said.push(n),
        );
        assert!(r.is_ok());
        assert_eq!(said, [1, 2]);
        // Always interrupted: the last try's error after exactly 5 tries.
        let mut calls = 0;
        let r = retry(
            5,
            interrupted,
            || {
                calls += 1;
                Err(Error::from(ErrorKind::WouldBlock))
            },
            |_| {},
        );
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::WouldBlock));
        assert_eq!(calls, 5);
        // Any other error at once.
        let mut calls = 0;
        let r = retry(
            5,
            interrupted,
            || {
                calls += 1;
                Err(Error::from(ErrorKind::PermissionDenied))
            },
            |_| {},
        );
        assert_eq!(r.map_err(|e| e.kind()), Err(ErrorKind::PermissionDenied));
        assert_eq!(calls, 1);
    }
}
