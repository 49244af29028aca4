//! Explaining a verdict: what the datapath decides for an address, and
//! why, read from the live kernel maps (`enforcer check`).
//!
//! [`Explainer`] opens the pinned maps read-only (`BPF_F_RDONLY`), without
//! loading any program, so it works with no agent running and from inside
//! the running one. [`Explainer::explain`] then takes the steps of
//! `enforcer-ebpf/src/decide.rs` (and `mode.rs`) one by one, against the
//! same maps, in the same order, with the same treatment of odd values;
//! each step below names the line of the kernel code it mirrors. It is a
//! mirror, not a model: it must change whenever `decide.rs` changes, and
//! `tests/tests/check.rs` compares it with the kernel's own verdict (under
//! `BPF_PROG_TEST_RUN`) for thousands of addresses of a real database, so
//! drift fails a test instead of misleading an operator. The GeoIP table
//! lookup is the exception: not mirrored but shared, the kernel's own code
//! (`enforcer_common::lookup`) run on readers of the pinned maps.
//!
//! # The matched prefix
//!
//! A userspace lookup in an LPM trie returns the value of the longest
//! matching key, not the key. An exception rule carries the length of the
//! configured CIDR that won there (`Rule::prefix_len`; the agent stores the
//! winning rule at more specific keys too, see `policy::fold_rules`), so the
//! prefix reported is that configured CIDR, the one an operator finds in
//! the config. The GeoIP flat tables store no prefixes, only a country per
//! address: the prefix reported is the one of the minimal CIDR cover of the
//! same-country range around the address, read from the same tables, which
//! is what the `geoip` crate's lookup answers for the aggregated table.
//!
//! # Consistency
//!
//! The agent writes only the inactive slot and then flips the slot word and
//! bumps the generation; an explanation reads the generation before and
//! after its lookups and starts again when it moved, so it never mixes two
//! policies. Per-cgroup overrides are read as they are at that moment.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{
        fd::AsFd as _,
        unix::fs::{DirEntryExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{
        Array, HashMap, Map, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    APPROVED, CFG_GENERATION, CFG_GEO6F_LEN, CFG_LAYOUT, CFG_OVERRIDES, CFG_SLOT, CONFIG,
    COUNTRY_SLOTS, Family, GEO4, GEO4E, GEO6, GEO6_BLOCK, GEO6F, GEO6I, Geo6Block, Geo6Leaf,
    LAYOUT_VERSION, MAX_CGROUP_DEPTH, MODE_BY_CG, Mode, Outcome, POLICY, RULES4, RULES6, Rule,
    RuleKind, Source, UNKNOWN_COUNTRY, cfg_mode, country,
    lookup::{Entries4, Tables4, Tables6},
};
use geoip::CountryCode;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{DatapathError, detach, geo, geo4, geo6, map_err};
use crate::{paths, policy::CompiledPolicy};

/// The id of the root cgroup of the cgroup2 hierarchy (its kernfs inode).
const ROOT_CGROUP_ID: u64 = 1;

/// How often an explanation starts again because the policy flipped while
/// it read; a flip takes one config word, so a second miss means a reload
/// loop, and that is reported.
const ATTEMPTS: usize = 3;

/// An error explaining a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("cgroup {cgroup}: {detail}")]
    Cgroup { cgroup: String, detail: String },
    #[error("the policy under {0} kept changing while it was being read; try again")]
    Unstable(PathBuf),
}

/// Which configured rule decided (exceptions, site networks, built-in
/// ranges).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `deny`, `allow`, `site` or `builtin`.
    #[serde(with = "label::rule_kind")]
    pub kind: RuleKind,
    /// Position in its config list (`deny[i]`, `allow[i]`, the i-th
    /// `[[site]]`), or in the built-in table.
    pub index: u16,
    /// What a built-in range is ("loopback", "private", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
}

/// Where the mode that applies comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum ModeFrom {
    /// The global mode of the active slot.
    Global,
    /// A per-cgroup override: the deepest ancestor of the cgroup asked
    /// about (or the cgroup itself) that has one.
    Override {
        cgroup_id: u64,
        /// Its level in the hierarchy (0 is the root).
        level: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<PathBuf>,
    },
}

/// The cgroup an explanation was asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupRef {
    pub id: u64,
    pub path: PathBuf,
}

/// What the datapath decides for one address, and why. Serialisable, so
/// the agent can send it over its control socket as is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The address asked about.
    pub address: IpAddr,
    /// The address decided: an IPv4-mapped IPv6 address as its IPv4
    /// address, like the kernel.
    pub decided_as: IpAddr,
    #[serde(with = "label::family")]
    pub family: Family,
    /// The prefix of the entry that decided: the configured CIDR of an
    /// exception, site network or built-in range, or the GeoIP prefix.
    /// `None` when nothing matched (source `unknown`).
    #[serde(with = "opt_net")]
    pub prefix: Option<IpNetwork>,
    #[serde(with = "label::source")]
    pub source: Source,
    /// The rule that decided, for every source but GeoIP and unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The destination's country (ISO code), as counted: from the site
    /// network, or from GeoIP (also under a deny exception). `None` when
    /// unknown or not geolocated (exempt).
    pub country: Option<CountryCode>,
    /// The GeoIP prefix the country came from, when GeoIP was consulted
    /// and located the address.
    #[serde(with = "opt_net")]
    pub geoip_prefix: Option<IpNetwork>,
    /// Whether the policy approves the destination; `None` when it is not
    /// consulted (exempt). A deny exception is never approved.
    pub approved: Option<bool>,
    /// The mode that applies to the caller (it only matters when the
    /// destination is not approved).
    #[serde(with = "label::mode")]
    pub mode: Mode,
    pub mode_from: ModeFrom,
    /// The verdict the kernel gives: allowed, denied, would_deny, exempt
    /// (the outcome the counters use).
    #[serde(with = "label::outcome")]
    pub outcome: Outcome,
    /// The cgroup asked about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupRef>,
    /// Per-cgroup mode overrides in force (`CONFIG[CFG_OVERRIDES]`): when
    /// not 0 and no cgroup was given, a process's mode may differ from
    /// `mode`.
    pub overrides: u32,
    /// The policy slot the answer was read from, and its generation.
    pub slot: u32,
    pub generation: u32,
}

/// The pinned maps of an installed datapath, opened read-only.
pub struct Explainer {
    pin_dir: PathBuf,
    config: Array<MapData, u32>,
    policy: Array<MapData, u32>,
    rules4: [LpmTrie<MapData, [u8; 4], Rule>; 2],
    rules6: [LpmTrie<MapData, [u8; 16], Rule>; 2],
    /// `GEO4` and `GEO4E`, each one large value, read a page at a time
    /// (see [`Paged`]).
    geo4: [MapData; 2],
    geo4e: [MapData; 2],
    /// `GEO6I` and `GEO6`, one value each too.
    geo6i: [MapData; 2],
    geo6: [MapData; 2],
    geo6f: [Array<MapData, Geo6Block>; 2],
    overrides: HashMap<MapData, u64, u32>,
}

/// Opens one pinned map read-only.
fn open_read_only(pin_dir: &Path, name: &'static str) -> Result<Map, DatapathError> {
    open(pin_dir, name, detach::BPF_F_RDONLY)
}

fn open(pin_dir: &Path, name: &'static str, flags: u32) -> Result<Map, DatapathError> {
    let path = paths::PinLayout::new(pin_dir).maps.join(name);
    if !path.exists() {
        return Err(DatapathError::NotInstalled(pin_dir.to_owned()));
    }
    let fd = detach::open_pinned_with(&path, flags).map_err(|e| DatapathError::Pin {
        path: path.clone(),
        detail: format!("cannot open the pinned map: {e}"),
    })?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}

/// A pinned array for reading through a read-only mapping
/// ([`geo::read_window`]). Its fd is opened read-write: the kernel maps a
/// BPF map only shared (`bpf_map_mmap` refuses a mapping without
/// VM_SHARED), and mmap drops VM_SHARED for a file not open for writing
/// (mm/mmap.c, `do_mmap`); the mapping itself is PROT_READ, and the kernel
/// then also clears VM_MAYWRITE, so it can never be made writable.
fn map_data(pin_dir: &Path, name: &'static str) -> Result<MapData, DatapathError> {
    match open(pin_dir, name, 0)? {
        Map::Array(data) => Ok(data),
        _ => Err(map_err(name)(MapError::InvalidName {
            name: name.to_owned(),
        })),
    }
}

fn trie<K: Pod, V: Pod>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<LpmTrie<MapData, K, V>, DatapathError> {
    LpmTrie::try_from(open_read_only(pin_dir, name)?).map_err(map_err(name))
}

fn array<V: Pod>(pin_dir: &Path, name: &'static str) -> Result<Array<MapData, V>, DatapathError> {
    Array::try_from(open_read_only(pin_dir, name)?).map_err(map_err(name))
}

/// The largest aligned block of a `bits`-wide family that contains `a` and
/// lies inside `start..=end`: the prefix of the minimal CIDR cover of that
/// range which holds `a` (what the geoip crate's lookup answers).
fn cover_prefix(a: u128, start: u128, end: u128, bits: u32) -> u8 {
    (0..=bits)
        .find(|&len| {
            let host = bits - len;
            let size_mask = if host >= 128 {
                u128::MAX
            } else {
                (1u128 << host) - 1
            };
            let net = a & !size_mask;
            net >= start && (net | size_mask) <= end
        })
        .unwrap_or(bits as u8 as u32) as u8
}

/// One map of a single large value (the GeoIP tables but `GEO6F`: 256 KiB
/// to 4 MiB), which a map lookup would copy whole (onto the stack, through
/// aya): read through a read-only mapping instead, one page at a time, and
/// the pages read are kept, as a descent reads several elements of one
/// cache line.
struct Paged<'a> {
    name: &'static str,
    data: &'a MapData,
    /// The value's size.
    bytes: usize,
    pages: std::cell::RefCell<std::collections::HashMap<usize, Vec<u8>>>,
}

impl<'a> Paged<'a> {
    fn new(name: &'static str, data: &'a MapData, bytes: usize) -> Paged<'a> {
        Paged {
            name,
            data,
            bytes,
            pages: Default::default(),
        }
    }

    /// Element `i` of the value seen as an array of `T`.
    fn get<T: Pod>(&self, i: u32) -> Result<T, DatapathError> {
        let size = std::mem::size_of::<T>();
        let first = i as usize * size;
        if first + size > self.bytes {
            return Err(map_err(self.name)(MapError::OutOfBounds {
                index: i,
                max_entries: (self.bytes / size) as u32,
            }));
        }
        // Whole pages: a mapping's offset must be a multiple of one. The
        // tables' elements (4 or 64 bytes) never straddle two, but the copy
        // below does not rely on it.
        let page_bytes = geo::page_bytes();
        let mut out = Vec::with_capacity(size);
        let mut pages = self.pages.borrow_mut();
        while out.len() < size {
            let byte = first + out.len();
            let page = byte / page_bytes;
            let bytes = match pages.entry(page) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(geo::read_window(
                    self.data.fd().as_fd(),
                    page * page_bytes,
                    page_bytes.min(self.bytes - page * page_bytes),
                    self.name,
                )?),
            };
            let at = byte % page_bytes;
            let take = (size - out.len()).min(bytes.len() - at);
            out.extend_from_slice(&bytes[at..at + take]);
        }
        // SAFETY: `out` holds size_of::<T>() bytes, and T is Pod: plain
        // bytes with no invalid values.
        Ok(unsafe { std::ptr::read_unaligned(out.as_ptr().cast::<T>()) })
    }
}

/// One slot's IPv4 tables, read from the pinned maps, for
/// [`geo4::lookup`].
struct SlotV4<'a> {
    words: Paged<'a>,
    entries: Paged<'a>,
}

impl<'a> Tables4 for SlotV4<'a> {
    type Error = DatapathError;
    type Entries<'s>
        = &'s Paged<'a>
    where
        Self: 's;

    fn word(&self, i: u32) -> Result<u32, DatapathError> {
        self.words.get(i)
    }

    fn entries(&self) -> Result<&Paged<'a>, DatapathError> {
        Ok(&self.entries)
    }
}

/// `GEO4E`'s entries, a page at a time.
impl Entries4 for Paged<'_> {
    type Error = DatapathError;

    fn entry(&self, i: usize) -> Result<u32, DatapathError> {
        // The lookup's indices are below GEO4E_CAPACITY (2^20); a larger
        // one is out of bounds all the same.
        self.get(u32::try_from(i).unwrap_or(u32::MAX))
    }
}

/// A longest-prefix-match lookup of a full-length key; `None` when nothing
/// matches (the kernel's `get` returning `None`).
fn lpm<const N: usize, V: Pod>(
    trie: &LpmTrie<MapData, [u8; N], V>,
    name: &'static str,
    data: [u8; N],
) -> Result<Option<V>, DatapathError> {
    match trie.get(&Key::new((N * 8) as u32, data), 0) {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// A destination as the kernel decides it (decide.rs `Dest`).
#[derive(Clone, Copy, Debug)]
enum Dest {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Dest {
    /// decide.rs `Dest::from_v6` (and the hooks, which give IPv4 as is): an
    /// IPv6 address whose first ten bytes are zero and next two 0xff is
    /// decided as the IPv4 address in its last four.
    fn of(ip: IpAddr) -> Dest {
        match ip {
            IpAddr::V4(a) => Dest::V4(a.octets()),
            IpAddr::V6(a) => {
                let b = a.octets();
                let mapped = b[..10].iter().all(|&x| x == 0) && b[10] == 0xff && b[11] == 0xff;
                if mapped {
                    Dest::V4([b[12], b[13], b[14], b[15]])
                } else {
                    Dest::V6(b)
                }
            }
        }
    }

    fn family(self) -> Family {
        match self {
            Dest::V4(_) => Family::Ipv4,
            Dest::V6(_) => Family::Ipv6,
        }
    }

    fn ip(self) -> IpAddr {
        match self {
            Dest::V4(a) => IpAddr::V4(Ipv4Addr::from(a)),
            Dest::V6(a) => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }

    /// The prefix of `len` bits containing the address; `None` for a length
    /// the family cannot have (a corrupt value).
    fn prefix(self, len: u16) -> Option<IpNetwork> {
        let len = u8::try_from(len).ok()?;
        match self {
            Dest::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32u32.checked_sub(len.into())?)
                    .unwrap_or(0);
                let net = Ipv4Addr::from(u32::from_be_bytes(a) & mask);
                ipnetwork::Ipv4Network::new(net, len)
                    .ok()
                    .map(IpNetwork::V4)
            }
            Dest::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128u32.checked_sub(len.into())?)
                    .unwrap_or(0);
                let net = Ipv6Addr::from(u128::from_be_bytes(a) & mask);
                ipnetwork::Ipv6Network::new(net, len)
                    .ok()
                    .map(IpNetwork::V6)
            }
        }
    }
}

/// What a GeoIP table lookup gave.
#[derive(Clone, Copy, Debug)]
struct GeoHit {
    /// Country index, [`UNKNOWN_COUNTRY`] when not located.
    country: u16,
    prefix: Option<IpNetwork>,
}

/// Where the mode comes from, before it is written out.
struct AppliedMode {
    mode: Mode,
    from: ModeFrom,
}

/// One slot's IPv6 tables, read from the pinned maps, for
/// [`geo6::lookup`]: the index and the leaves a page at a time (each is one
/// value), the fine table one block at a time.
struct SlotV6<'a> {
    explainer: &'a Explainer,
    slot: usize,
    index: Paged<'a>,
    leaves: Paged<'a>,
}

impl Tables6 for SlotV6<'_> {
    type Error = DatapathError;
    type Node = [u64; 8];
    type Leaf = Geo6Leaf;

    fn node(&self, i: u32) -> Result<[u64; 8], DatapathError> {
        self.index.get(i)
    }

    fn leaf(&self, i: u32) -> Result<Geo6Leaf, DatapathError> {
        self.leaves.get(i)
    }

    fn fine_len(&self) -> Result<u32, DatapathError> {
        self.explainer.word(CFG_GEO6F_LEN[self.slot])
    }

    fn fine_start(&self, b: u32, j: usize) -> Result<(u64, u64), DatapathError> {
        let block = self.fine_block(b)?;
        let j = j % GEO6_BLOCK;
        Ok((block.hi[j], block.lo[j]))
    }

    fn fine_country(&self, b: u32, j: usize) -> Result<u16, DatapathError> {
        Ok(self.fine_block(b)?.country[j % GEO6_BLOCK])
    }
}

impl SlotV6<'_> {
    /// Fine block `b`, copied out of the map (4.5 KiB: a map lookup).
    fn fine_block(&self, b: u32) -> Result<Geo6Block, DatapathError> {
        self.explainer.geo6f[self.slot]
            .get(&b, 0)
            .map_err(map_err(GEO6F[self.slot]))
    }
}

impl Explainer {
    /// Opens the maps of the datapath pinned under `pin_dir` (the agent's
    /// `agent.pin_dir`). Nothing pinned there: [`DatapathError::NotInstalled`].
    pub fn open(pin_dir: &Path) -> Result<Explainer, DatapathError> {
        let config: Array<MapData, u32> =
            Array::try_from(open_read_only(pin_dir, CONFIG)?).map_err(map_err(CONFIG))?;
        let layout = config.get(&CFG_LAYOUT, 0).map_err(map_err(CONFIG))?;
        if layout == 0 {
            // Created by an agent that stopped before it wrote anything.
            return Err(DatapathError::NotInstalled(pin_dir.to_owned()));
        }
        if layout != LAYOUT_VERSION {
            return Err(DatapathError::Layout {
                path: paths::PinLayout::new(pin_dir).maps,
                found: layout,
            });
        }
        Ok(Explainer {
            pin_dir: pin_dir.to_owned(),
            config,
            policy: Array::try_from(open_read_only(pin_dir, POLICY)?).map_err(map_err(POLICY))?,
            rules4: [trie(pin_dir, RULES4[0])?, trie(pin_dir, RULES4[1])?],
            rules6: [trie(pin_dir, RULES6[0])?, trie(pin_dir, RULES6[1])?],
            geo4: [map_data(pin_dir, GEO4[0])?, map_data(pin_dir, GEO4[1])?],
            geo4e: [map_data(pin_dir, GEO4E[0])?, map_data(pin_dir, GEO4E[1])?],
            geo6i: [map_data(pin_dir, GEO6I[0])?, map_data(pin_dir, GEO6I[1])?],
            geo6: [map_data(pin_dir, GEO6[0])?, map_data(pin_dir, GEO6[1])?],
            geo6f: [array(pin_dir, GEO6F[0])?, array(pin_dir, GEO6F[1])?],
            overrides: HashMap::try_from(open_read_only(pin_dir, MODE_BY_CG)?)
                .map_err(map_err(MODE_BY_CG))?,
        })
    }

    /// The pin directory this reads.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Explains the verdict for `ip`, for a process (or socket) in the
    /// cgroup with id `cgroup_id` when given (its ancestry is found in the
    /// cgroup2 file system), else under the global mode.
    pub fn explain(&self, ip: IpAddr, cgroup_id: Option<u64>) -> Result<Explanation, ExplainError> {
        let cgroup = cgroup_id.map(CgroupAncestry::of_id).transpose()?;
        self.explain_in(ip, cgroup.as_ref())
    }

    /// [`Explainer::explain`] for a cgroup whose ancestry is known.
    pub fn explain_in(
        &self,
        ip: IpAddr,
        cgroup: Option<&CgroupAncestry>,
    ) -> Result<Explanation, ExplainError> {
        for _ in 0..ATTEMPTS {
            let before = self.word(CFG_GENERATION)?;
            let e = self.explain_once(ip, cgroup)?;
            if e.generation == before && self.word(CFG_GENERATION)? == before {
                return Ok(e);
            }
        }
        Err(ExplainError::Unstable(self.pin_dir.clone()))
    }

    fn word(&self, index: u32) -> Result<u32, DatapathError> {
        self.config.get(&index, 0).map_err(map_err(CONFIG))
    }

    /// decide.rs `decide` and `decide_in`, step by step.
    fn explain_once(
        &self,
        ip: IpAddr,
        cgroup: Option<&CgroupAncestry>,
    ) -> Result<Explanation, ExplainError> {
        // decide: `let slot = config(CFG_SLOT) & 1;`
        let slot = self.word(CFG_SLOT)? & 1;
        let generation = self.word(CFG_GENERATION)?;
        // The hooks: `Dest::from_v6` for IPv6 destinations.
        let dest = Dest::of(ip);
        let s = slot as usize;
        // decide_in: `let rule = rules.get(&key).copied();`
        let rule = match dest {
            Dest::V4(a) => lpm(&self.rules4[s], RULES4[s], a)?,
            Dest::V6(a) => lpm(&self.rules6[s], RULES6[s], a)?,
        };
        // decide_in: `let kind = rule.and_then(|r| RuleKind::from_raw(..))`:
        // a value with an unknown kind counts as no rule.
        let kind = rule.and_then(|r| RuleKind::from_raw(r.kind as u32).map(|k| (k, r)));
        let rule_ref = kind.map(|(k, r)| RuleRef {
            kind: k,
            index: r.id,
            builtin: (k == RuleKind::Builtin)
                .then(|| CompiledPolicy::builtin_label(r.id).map(|(_, label)| label.to_owned()))
                .flatten(),
        });
        let rule_prefix = kind.and_then(|(_, r)| dest.prefix(r.prefix_len));

        struct Step {
            country: u16,
            approved: Option<bool>,
            source: Source,
            prefix: Option<IpNetwork>,
            geo: Option<GeoHit>,
        }
        let step = match kind {
            // `Some((RuleKind::Deny, _)) => (geo_country(&key), false,
            // Source::DenyException)`: never approved, country from GeoIP.
            Some((RuleKind::Deny, _)) => {
                let geo = self.geoip(slot, dest)?;
                Step {
                    country: geo.country,
                    approved: Some(false),
                    source: Source::DenyException,
                    prefix: rule_prefix,
                    geo: Some(geo),
                }
            }
            // `Some((RuleKind::Allow, _)) => return exempt(..)`, and the same
            // for built-in ranges: country unknown, policy not consulted.
            Some((RuleKind::Allow, _)) | Some((RuleKind::Builtin, _)) => Step {
                country: UNKNOWN_COUNTRY,
                approved: None,
                source: if matches!(kind, Some((RuleKind::Allow, _))) {
                    Source::AllowException
                } else {
                    Source::Builtin
                },
                prefix: rule_prefix,
                geo: None,
            },
            // `Some((RuleKind::Site, Rule { country, .. }))`: an out-of-range
            // country is unknown; then the policy table.
            Some((RuleKind::Site, r)) => {
                let country = if (r.country as usize) < COUNTRY_SLOTS {
                    r.country
                } else {
                    UNKNOWN_COUNTRY
                };
                Step {
                    country,
                    approved: Some(self.approved(slot, country)?),
                    source: Source::Site,
                    prefix: rule_prefix,
                    geo: None,
                }
            }
            // `None => { let country = geo_country(&key); .. }`: GeoIP, or
            // unknown when it does not locate the address.
            None => {
                let geo = self.geoip(slot, dest)?;
                Step {
                    country: geo.country,
                    approved: Some(self.approved(slot, geo.country)?),
                    source: if geo.country == UNKNOWN_COUNTRY {
                        Source::Unknown
                    } else {
                        Source::Geoip
                    },
                    prefix: geo.prefix,
                    geo: Some(geo),
                }
            }
        };
        // `let mode = mode(slot);`, asked only when not approved; here always,
        // since an operator wants to know it either way.
        let applied = self.mode(slot, cgroup)?;
        // decide_in's tail: approved -> Allowed; exempt -> Exempt; else the
        // mode: enforce -> Denied, observe -> WouldDeny.
        let outcome = match step.approved {
            None => Outcome::Exempt,
            Some(true) => Outcome::Allowed,
            Some(false) => match applied.mode {
                Mode::Enforce => Outcome::Denied,
                Mode::Observe => Outcome::WouldDeny,
            },
        };
        Ok(Explanation {
            address: ip,
            decided_as: dest.ip(),
            family: dest.family(),
            prefix: step.prefix,
            source: step.source,
            rule: rule_ref,
            country: country_code(step.country),
            geoip_prefix: step
                .geo
                .filter(|g| g.country != UNKNOWN_COUNTRY)
                .and_then(|g| g.prefix),
            approved: step.approved,
            mode: applied.mode,
            mode_from: applied.from,
            outcome,
            cgroup: cgroup.map(|c| CgroupRef {
                id: c.id(),
                path: c.path.clone(),
            }),
            overrides: self.word(CFG_OVERRIDES)?,
            slot,
            generation,
        })
    }

    /// decide_in's `geo_country` (enforcer-ebpf geo.rs): the GeoIP flat
    /// tables of `slot`; an out-of-range country is unknown. Not a mirror:
    /// the descent is the kernel's own (`enforcer_common::lookup`), given
    /// readers of the pinned maps. The kernel stores no prefixes: the
    /// prefix reported is the one of the minimal CIDR cover of the
    /// same-country range around the address, read from the same tables.
    fn geoip(&self, slot: u32, dest: Dest) -> Result<GeoHit, DatapathError> {
        let unknown = GeoHit {
            country: UNKNOWN_COUNTRY,
            prefix: None,
        };
        let s = slot as usize;
        match dest {
            Dest::V4(a) => {
                let ip = u32::from_be_bytes(a);
                // The kernel's lookup, through geo4.rs.
                let found = geo4::lookup(
                    &SlotV4 {
                        words: Paged::new(GEO4[s], &self.geo4[s], geo4::WORDS_BYTES),
                        entries: Paged::new(GEO4E[s], &self.geo4e[s], geo4::ENTRIES_BYTES),
                    },
                    ip,
                )?;
                if found.country == UNKNOWN_COUNTRY {
                    return Ok(unknown);
                }
                let len = cover_prefix(ip.into(), found.start.into(), found.end.into(), 32);
                Ok(GeoHit {
                    country: found.country,
                    prefix: dest.prefix(len.into()),
                })
            }
            Dest::V6(a) => {
                let addr = u128::from_be_bytes(a);
                // The kernel's lookup, through geo6.rs.
                let found = geo6::lookup(
                    &SlotV6 {
                        explainer: self,
                        slot: s,
                        index: Paged::new(GEO6I[s], &self.geo6i[s], geo6::INDEX_BYTES),
                        leaves: Paged::new(GEO6[s], &self.geo6[s], geo6::LEAVES_BYTES),
                    },
                    addr,
                )?;
                let (country, start, end) = (found.country, found.start, found.end);
                if country == UNKNOWN_COUNTRY || country as usize >= COUNTRY_SLOTS {
                    return Ok(unknown);
                }
                let plen = cover_prefix(addr, start, end, 128);
                Ok(GeoHit {
                    country,
                    prefix: dest.prefix(plen.into()),
                })
            }
        }
    }

    /// decide.rs `approved`: `POLICY[slot * COUNTRY_SLOTS + country] ==
    /// APPROVED`; a missing entry is not approved.
    fn approved(&self, slot: u32, country: u16) -> Result<bool, DatapathError> {
        let index = slot * COUNTRY_SLOTS as u32 + country as u32;
        match self.policy.get(&index, 0) {
            Ok(v) => Ok(v == APPROVED),
            Err(MapError::OutOfBounds { .. }) => Ok(false),
            Err(e) => Err(map_err(POLICY)(e)),
        }
    }

    /// mode.rs `walk` and `global`.
    fn mode(
        &self,
        slot: u32,
        cgroup: Option<&CgroupAncestry>,
    ) -> Result<AppliedMode, DatapathError> {
        // `global`: an unreadable mode word fails open to observe.
        let global = AppliedMode {
            mode: Mode::from_raw(self.word(cfg_mode(slot))?).unwrap_or(Mode::Observe),
            from: ModeFrom::Global,
        };
        // `if config(CFG_OVERRIDES) == 0 { return global(slot); }`
        if self.word(CFG_OVERRIDES)? == 0 {
            return Ok(global);
        }
        let Some(cgroup) = cgroup else {
            return Ok(global);
        };
        // `for level in 0..MAX_CGROUP_DEPTH`: the ancestor's id (0 past the
        // leaf ends the walk); the deepest valid override wins.
        let mut found = None;
        for level in 0..MAX_CGROUP_DEPTH {
            let id = cgroup.ids.get(level as usize).copied().unwrap_or(0);
            if id == 0 {
                break;
            }
            let m = match self.overrides.get(&id, 0) {
                Ok(m) => Mode::from_raw(m),
                Err(MapError::KeyNotFound) => None,
                Err(e) => return Err(map_err(MODE_BY_CG)(e)),
            };
            if let Some(m) = m {
                found = Some(AppliedMode {
                    mode: m,
                    from: ModeFrom::Override {
                        cgroup_id: id,
                        level,
                        path: cgroup.path_at(level as usize),
                    },
                });
            }
        }
        Ok(found.unwrap_or(global))
    }
}

/// The ISO code of a country index; `None` for unknown.
fn country_code(index: u16) -> Option<CountryCode> {
    country::code(index).and_then(CountryCode::new)
}

/// A cgroup and the ids of its ancestors, root first: what the kernel's
/// `bpf_get_current_ancestor_cgroup_id(level)` and
/// `bpf_skb_ancestor_cgroup_id(level)` give for level 0, 1, ... (a cgroup's
/// id is its inode number in the cgroup2 file system).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupAncestry {
    /// The cgroup's directory.
    pub path: PathBuf,
    /// The root's id (1) first, the cgroup's own last.
    pub ids: Vec<u64>,
    /// The cgroup2 mount `path` is under.
    mount: PathBuf,
}

impl CgroupAncestry {
    /// The cgroup at `path`: absolute (under the cgroup2 mount) or relative
    /// to the mount, as in the config's `scope.cgroups`.
    pub fn of_path(path: &Path) -> Result<CgroupAncestry, ExplainError> {
        let mount = cgroup_mount(path)?;
        Self::of_path_under(&mount, path)
    }

    /// The cgroup whose id is `id`, found by walking the cgroup2 tree.
    pub fn of_id(id: u64) -> Result<CgroupAncestry, ExplainError> {
        let what = format!("id {id}");
        let mount = cgroup_mount(Path::new(&what))?;
        let err = |detail: String| ExplainError::Cgroup {
            cgroup: what.clone(),
            detail,
        };
        check_root(&mount, &what)?;
        if id == ROOT_CGROUP_ID {
            return Self::of_path_under(&mount, &mount);
        }
        // Breadth first; cgroupfs has no links, so this ends. readdir's
        // d_ino is the kernfs inode, the cgroup id, without a stat.
        let mut queue = std::collections::VecDeque::from([mount.clone()]);
        while let Some(dir) = queue.pop_front() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue; // removed meanwhile
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.ino() == id {
                    return Self::of_path_under(&mount, &e.path());
                }
                queue.push_back(e.path());
            }
        }
        Err(err(format!("no such cgroup under {}", mount.display())))
    }

    fn of_path_under(mount: &Path, path: &Path) -> Result<CgroupAncestry, ExplainError> {
        let shown = path.display().to_string();
        let err = |detail: String| ExplainError::Cgroup {
            cgroup: shown.clone(),
            detail,
        };
        let absolute = if path.is_absolute() {
            path.to_owned()
        } else {
            mount.join(path)
        };
        let path = fs::canonicalize(&absolute)
            .map_err(|e| err(format!("cannot open {}: {e}", absolute.display())))?;
        let rel = path.strip_prefix(mount).map_err(|_| {
            err(format!(
                "is not under the cgroup2 mount {}",
                mount.display()
            ))
        })?;
        check_root(mount, &shown)?;
        let mut ids = Vec::new();
        let mut dir = mount.to_owned();
        for part in std::iter::once(None).chain(rel.components().map(Some)) {
            if let Some(p) = part {
                dir.push(p);
            }
            let meta = fs::metadata(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
            if !meta.is_dir() {
                return Err(err("is not a cgroup directory".into()));
            }
            ids.push(meta.ino());
        }
        Ok(CgroupAncestry {
            path,
            ids,
            mount: mount.to_owned(),
        })
    }

    /// The cgroup's own id.
    pub fn id(&self) -> u64 {
        self.ids.last().copied().unwrap_or(ROOT_CGROUP_ID)
    }

    /// The directory of the ancestor at `level`.
    fn path_at(&self, level: usize) -> Option<PathBuf> {
        let rel = self.path.strip_prefix(&self.mount).ok()?;
        let mut p = self.mount.clone();
        for c in rel.components().take(level) {
            p.push(c);
        }
        (level <= rel.components().count()).then_some(p)
    }
}

fn cgroup_mount(what: &Path) -> Result<PathBuf, ExplainError> {
    paths::cgroup2_mount().map_err(|e| ExplainError::Cgroup {
        cgroup: what.display().to_string(),
        detail: format!("cannot find the cgroup2 mount: {e}"),
    })
}

/// The levels the kernel walks count from the hierarchy's root; a mount
/// that shows a sub-tree (a cgroup namespace, a bind mount) would shift
/// them, so it is refused instead of explained wrongly.
fn check_root(mount: &Path, what: &str) -> Result<(), ExplainError> {
    match fs::metadata(mount) {
        Ok(m) if m.ino() == ROOT_CGROUP_ID => Ok(()),
        Ok(_) => Err(ExplainError::Cgroup {
            cgroup: what.to_owned(),
            detail: format!(
                "the cgroup2 mount {} shows only part of the hierarchy (a cgroup namespace?), \
                 so its levels are not the kernel's; run this in the host's cgroup namespace",
                mount.display()
            ),
        }),
        Err(e) => Err(ExplainError::Cgroup {
            cgroup: what.to_owned(),
            detail: format!("{}: {e}", mount.display()),
        }),
    }
}

/// `Option<IpNetwork>` as a CIDR string or null (ipnetwork's serde support
/// is an off-by-default feature).
mod opt_net {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(v: &Option<IpNetwork>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.collect_str(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpNetwork>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(D::Error::custom))
            .transpose()
    }
}

/// The datapath's enums as their labels (the same words as metrics and
/// events), both ways.
mod label {
    macro_rules! label_serde {
        ($module:ident, $ty:ident) => {
            pub mod $module {
                use enforcer_common::$ty;
                use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

                pub fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str(v.label())
                }

                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                    let s = String::deserialize(d)?;
                    $ty::ALL
                        .iter()
                        .copied()
                        .find(|v| v.label() == s)
                        .ok_or_else(|| {
                            D::Error::custom(format!("unknown {} {s:?}", stringify!($module)))
                        })
                }
            }
        };
    }
    label_serde!(family, Family);
    label_serde!(source, Source);
    label_serde!(mode, Mode);
    label_serde!(outcome, Outcome);
    label_serde!(rule_kind, RuleKind);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_decided_as_ipv4() {
        let d = Dest::of("::ffff:198.51.100.7".parse().expect("ip"));
        assert_eq!(d.ip(), "198.51.100.7".parse::<IpAddr>().expect("ip"));
        assert_eq!(d.family(), Family::Ipv4);
        // Not mapped: IPv4-compatible (deprecated) and NAT64 addresses.
        for s in [
            "::198.51.100.7",
            "64:ff9b::198.51.100.7",
            "::fffe:198.51.100.7",
        ] {
            assert_eq!(
                Dest::of(s.parse().expect("ip")).family(),
                Family::Ipv6,
                "{s}"
            );
        }
    }

    #[test]
    fn prefixes_mask_the_address() {
        let d = Dest::of("198.51.100.77".parse().expect("ip"));
        assert_eq!(d.prefix(24), Some("198.51.100.0/24".parse().expect("net")));
        assert_eq!(d.prefix(0), Some("0.0.0.0/0".parse().expect("net")));
        assert_eq!(d.prefix(32), Some("198.51.100.77/32".parse().expect("net")));
        assert_eq!(d.prefix(33), None, "a corrupt length is no prefix");
        let d = Dest::of("2001:db8:1:2::9".parse().expect("ip"));
        assert_eq!(d.prefix(48), Some("2001:db8:1::/48".parse().expect("net")));
        assert_eq!(d.prefix(0), Some("::/0".parse().expect("net")));
        assert_eq!(d.prefix(129), None);
    }

    #[test]
    fn a_cgroup_is_found_by_path_and_by_id() {
        // This process's cgroup ("0::/path" in /proc/self/cgroup); hosts
        // without a cgroup2 hierarchy have nothing to test.
        let Ok(mount) = paths::cgroup2_mount() else {
            return;
        };
        let own = fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("0::")
                        .map(|p| p.trim_start_matches('/').to_owned())
                })
            })
            .expect("a cgroup2 line in /proc/self/cgroup");
        let by_path = CgroupAncestry::of_path(Path::new(&own)).expect("by path");
        assert_eq!(by_path.path, mount.join(&own));
        assert_eq!(by_path.ids.first(), Some(&ROOT_CGROUP_ID));
        assert_eq!(by_path.ids.len(), Path::new(&own).components().count() + 1);
        let by_id = CgroupAncestry::of_id(by_path.id()).expect("by id");
        assert_eq!(by_id, by_path);
        assert_eq!(by_path.path_at(0), Some(mount.clone()));
        let root = CgroupAncestry::of_id(ROOT_CGROUP_ID).expect("the root");
        assert_eq!(root.ids, vec![ROOT_CGROUP_ID]);
        let e = CgroupAncestry::of_path(Path::new("no-such-cgroup-ee"))
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("no-such-cgroup-ee") && e.contains("cannot open"),
            "{e}"
        );
        let e = CgroupAncestry::of_id(u64::MAX)
            .expect_err("missing")
            .to_string();
        assert!(e.contains("no such cgroup"), "{e}");
    }

    #[test]
    fn explanations_round_trip_through_json() {
        let e = Explanation {
            address: "::ffff:198.51.100.20".parse().expect("ip"),
            decided_as: "198.51.100.20".parse().expect("ip"),
            family: Family::Ipv4,
            prefix: Some("198.51.100.0/24".parse().expect("net")),
            source: Source::DenyException,
            rule: Some(RuleRef {
                kind: RuleKind::Deny,
                index: 2,
                builtin: None,
            }),
            country: "US".parse().ok(),
            geoip_prefix: Some("198.51.100.20/32".parse().expect("net")),
            approved: Some(false),
            mode: Mode::Enforce,
            mode_from: ModeFrom::Override {
                cgroup_id: 42,
                level: 1,
                path: Some("/sys/fs/cgroup/x".into()),
            },
            outcome: Outcome::Denied,
            cgroup: Some(CgroupRef {
                id: 42,
                path: "/sys/fs/cgroup/x".into(),
            }),
            overrides: 1,
            slot: 1,
            generation: 7,
        };
        let text = serde_json::to_string(&e).expect("serialise");
        for needle in [
            r#""source":"deny_exception""#,
            r#""outcome":"denied""#,
            r#""family":"ipv4""#,
            r#""prefix":"198.51.100.0/24""#,
            r#""country":"US""#,
            r#""from":"override""#,
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        let back: Explanation = serde_json::from_str(&text).expect("deserialise");
        assert_eq!(back, e);
        let bad = text.replace("deny_exception", "nonsense");
        assert!(serde_json::from_str::<Explanation>(&bad).is_err());
    }
}
