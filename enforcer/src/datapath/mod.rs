//! The datapath from the agent's side: load it (or adopt what is pinned),
//! write policy slots, attach to cgroups, read counters, uninstall.
//!
//! Invariants kept here (DESIGN.md):
//! - enforcement outlives the agent: maps and links are pinned under a
//!   versioned directory on bpffs, and `uninstall` is the only thing that
//!   removes them;
//! - no decision sees half a policy: slots are written while inactive,
//!   verified, then flipped with one word;
//! - bad input never changes what is in force: anything that fails before
//!   the flip leaves the active slot as it was, and a failed first install
//!   removes what it created.

mod bpffs;
pub mod counters;
mod links;
mod slots;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError},
    programs::{CgroupSkb, CgroupSockAddr, ProgramError},
};
use enforcer_common::{
    CFG_EVENT_BURST, CFG_EVENT_RATE, CFG_GENERATION, CFG_LAYOUT, CFG_MODE, CFG_OVERRIDES, CFG_SLOT,
    CONFIG, LAYOUT_VERSION, MODE_BY_CG, MODE_OVERRIDES_CAPACITY, Mode,
};

pub use self::{
    bpffs::BpffsError,
    links::{AttachReport, Staged, UninstallReport, uninstall},
    slots::SlotReport,
};
use geoip::GeoTable;

use crate::{paths::PinLayout, policy::CompiledPolicy, scope::CgroupTarget};

/// The compiled datapath object, built by build.rs with aya-build.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf"));

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
    #[error("no datapath is pinned under {0} (is the agent installed? see `enforcer run`)")]
    NotInstalled(PathBuf),
}

pub fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// A loaded (or adopted) datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pins: PinLayout,
    adopted: bool,
    /// The GeoIP table this process last wrote into each slot (`None`:
    /// unknown, e.g. written by an earlier agent).
    held: [Option<GeoTable>; 2],
    /// Links this process attached and pinned (pin names).
    owned: BTreeSet<String>,
    /// This process created the pin directory: a failed first install
    /// removes it again.
    created_root: bool,
}

impl Datapath {
    /// Loads the datapath, adopting the maps pinned under `pin_dir` when
    /// there are some (counters continue), and loads its programs into the
    /// kernel. Nothing is attached yet.
    pub fn load(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        let pins = PinLayout::new(pin_dir);
        bpffs::ensure(&pins.root)?;
        let adopted = pins.maps.join(CONFIG).exists();
        let created_root = bpffs::create_dirs(&pins.root, &pins.maps)?;
        match load_object(&pins, adopted) {
            Ok(ebpf) => Ok(Datapath {
                ebpf,
                pins,
                adopted,
                held: [None, None],
                owned: BTreeSet::new(),
                created_root,
            }),
            Err(e) => {
                if created_root {
                    remove_pins(&pins.root);
                }
                Err(e)
            }
        }
    }

    /// After a failed first install: remove every pin this process created.
    pub fn discard_if_new(&mut self) {
        if self.created_root {
            remove_pins(&self.pins.root);
        }
    }

    /// Whether maps pinned by an earlier agent were adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn pins(&self) -> &PinLayout {
        &self.pins
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

    /// The global mode in force.
    pub fn mode(&mut self) -> Result<Option<Mode>, DatapathError> {
        Ok(Mode::from_raw(self.config_word(CFG_MODE)?))
    }

    fn bump_generation(&mut self) -> Result<u32, DatapathError> {
        let g = self.config_word(CFG_GENERATION)?.wrapping_add(1);
        self.set_config_word(CFG_GENERATION, g)?;
        Ok(g)
    }

    /// Sets the global mode (one word), and bumps the generation so cached
    /// verdicts are re-decided. Returns the new generation.
    pub fn set_mode(&mut self, mode: Mode) -> Result<u32, DatapathError> {
        self.set_config_word(CFG_MODE, mode as u32)?;
        self.bump_generation()
    }

    fn overrides_map(&mut self) -> Result<HashMap<&mut MapData, u64, u32>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(MODE_BY_CG)
            .ok_or(DatapathError::MissingMap(MODE_BY_CG))?;
        HashMap::try_from(map).map_err(map_err(MODE_BY_CG))
    }

    /// Sets the events' per-CPU rate and burst (rate 0: no events).
    pub fn set_event_limits(&mut self, rate_per_cpu: u32, burst: u32) -> Result<(), DatapathError> {
        self.set_config_word(CFG_EVENT_BURST, burst)?;
        self.set_config_word(CFG_EVENT_RATE, rate_per_cpu)
    }

    /// Makes `MODE_BY_CG` hold exactly `overrides` (cgroup id, mode), then
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
            by_cg.insert(id, mode, 0).map_err(map_err(MODE_BY_CG))?;
        }
        for id in stale {
            by_cg.remove(&id).map_err(map_err(MODE_BY_CG))?;
        }
        self.set_config_word(CFG_OVERRIDES, overrides.len() as u32)
    }

    /// Writes `policy` into the inactive slot as a diff against what that
    /// slot holds, verifies it, then makes it the active slot.
    pub fn install(&mut self, policy: &CompiledPolicy) -> Result<SlotReport, DatapathError> {
        slots::check_capacity(policy)?;
        let target = 1 - self.active_slot()?;
        let contents = slots::SlotContents::new(policy);
        // Forget what the slot held before touching it: a failure part-way
        // leaves it unknown, and the next install reads it back.
        let held = self.held[target as usize].take();
        let mut report = slots::write(&mut self.ebpf, target, &contents, held.as_ref())?;
        slots::verify(&mut self.ebpf, target, &contents)?;
        self.held[target as usize] = Some(policy.geo.clone());
        // The flip: one aligned 32-bit store into an array map.
        self.set_config_word(CFG_SLOT, target)?;
        report.generation = self.bump_generation()?;
        Ok(report)
    }

    /// Attaches every program to every target cgroup under temporary pins,
    /// except where this agent's own link is already in place; see [`Staged`].
    pub fn stage(&mut self, targets: &[CgroupTarget]) -> Result<Staged, DatapathError> {
        links::stage(&mut self.ebpf, &self.pins, targets, &self.owned)
    }

    /// Commits staged links and remembers them as this agent's own.
    pub fn commit(&mut self, staged: Staged) -> Result<AttachReport, DatapathError> {
        let report = staged.commit()?;
        self.owned = report
            .attached
            .iter()
            .chain(&report.kept)
            .cloned()
            .collect();
        Ok(report)
    }
}

/// Loads the object with its maps pinned under `pins.maps` (adopting pinned
/// ones), checks their layout version and loads every program.
fn load_object(pins: &PinLayout, adopted: bool) -> Result<Ebpf, DatapathError> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.maps)
        .load(OBJECT)
        .map_err(DatapathError::Load)?;
    let layout = config_word(&mut ebpf, CFG_LAYOUT)?;
    if layout == 0 && !adopted {
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
                p.load().map_err(err)?;
            }
            ProgramKind::SkbEgress => {
                let p: &mut CgroupSkb = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
            }
        }
    }
    Ok(ebpf)
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

fn remove_pins(root: &Path) {
    if let Err(e) = fs::remove_dir_all(root) {
        tracing::warn!(path = %root.display(), error = %e, "cannot remove the pin directory after a failed install");
    }
}

/// Opens one pinned map of an installed datapath (for metrics, `check`,
/// `status`), without loading any program.
pub fn open_pinned(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    let path = PinLayout::new(pin_dir).maps.join(name);
    if !path.exists() {
        return Err(DatapathError::NotInstalled(pin_dir.to_owned()));
    }
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}
