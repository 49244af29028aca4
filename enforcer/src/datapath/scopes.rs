//! Scope slots: which configured scope entry the kernel counts a decision
//! under (`SCOPE_COUNTS`, layout in `enforcer_common::layout`).
//!
//! Every configured entry (a scope cgroup, by the label `status` and
//! `enforcer_scope_attached` give it, or an interface name) gets a slot
//! number, named in `SCOPE_NAMES`; the kernel finds a decision's slot
//! through `SCOPE_BY_CG` (cgroup id, at the levels of
//! `CONFIG[CFG_SCOPE_LEVELS]`) or `SCOPE_BY_IF` (ifindex). The rules, so
//! that no count is ever read under a name it was not made for:
//!
//! - an entry keeps its slot across reloads and agent restarts (the names
//!   are pinned with the counts);
//! - slot numbers come from `CONFIG[CFG_SCOPE_NEXT]` and are never handed
//!   out twice while the maps live: a removed entry's slot is never reused,
//!   so counts made for it cannot turn up under a newer entry's name;
//! - a removed entry keeps its name while it has counts (its series stay,
//!   frozen); a name with none is dropped, making room;
//! - with [`SCOPE_NAMES_CAPACITY`] names in use a new entry gets no slot:
//!   its decisions are counted in the totals and in `SCOPE_MISSES`
//!   (reported as scope `overflow`), and a warning says so.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use enforcer_common::{
    CFG_SCOPE_LEVELS, CFG_SCOPE_NEXT, MAX_CGROUP_DEPTH, NO_SCOPE, SCOPE_BY_CG, SCOPE_BY_IF,
    SCOPE_COUNTS, SCOPE_NAME_BYTES, SCOPE_NAME_CGROUP, SCOPE_NAME_INTERFACE, SCOPE_NAMES,
    SCOPE_NAMES_CAPACITY, SCOPE_TARGETS_CAPACITY, ScopeCount, ScopeKey, ScopeName,
};

use super::{Datapath, DatapathError, map_err};

/// What a scope entry is, and where the kernel finds it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScopePlace {
    /// A cgroup: its id and its level under the cgroup2 mount (0: the mount).
    Cgroup { id: u64, level: u32 },
    /// An interface: its index.
    Interface { ifindex: u32 },
    /// A cgroup entry that does not exist now.
    AbsentCgroup,
    /// An interface entry that does not exist now.
    AbsentInterface,
}

impl ScopePlace {
    fn kind(&self) -> u32 {
        match self {
            Self::Cgroup { .. } | Self::AbsentCgroup => SCOPE_NAME_CGROUP,
            Self::Interface { .. } | Self::AbsentInterface => SCOPE_NAME_INTERFACE,
        }
    }
}

/// One configured scope entry, by its label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopeTarget {
    pub label: String,
    pub place: ScopePlace,
}

/// The slots of a set of configured entries, worked out from the names in
/// use (see the module docs for the rules).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// Each wanted label's slot; a label missing here got none.
    pub slots: BTreeMap<String, u32>,
    /// Names to write: slot, kind, label.
    pub add: Vec<(u32, u32, String)>,
    /// Names to drop: removed entries with no counts.
    pub drop: Vec<u32>,
    /// `CONFIG[CFG_SCOPE_NEXT]` after the plan.
    pub next: u32,
    /// Wanted labels that got no slot (no room, or too long a label).
    pub unassigned: Vec<String>,
}

/// Plans the slots of `wanted` (label, kind), given the names in use
/// (slot -> label), the slots with counts, the next free slot number and
/// the room for names.
pub fn plan_slots(
    names: &BTreeMap<u32, String>,
    counted: &BTreeSet<u32>,
    wanted: &[(String, u32)],
    next: u32,
    capacity: usize,
) -> SlotPlan {
    let mut plan = SlotPlan {
        next: next.max(NO_SCOPE + 1),
        ..SlotPlan::default()
    };
    let by_label: BTreeMap<&str, u32> = names.iter().map(|(s, l)| (l.as_str(), *s)).collect();
    let wanted_labels: BTreeSet<&str> = wanted.iter().map(|(l, _)| l.as_str()).collect();
    plan.drop = names
        .iter()
        .filter(|(slot, label)| !wanted_labels.contains(label.as_str()) && !counted.contains(slot))
        .map(|(slot, _)| *slot)
        .collect();
    let mut in_use = names.len() - plan.drop.len();
    for (label, kind) in wanted {
        if plan.slots.contains_key(label) {
            continue;
        }
        if let Some(&slot) = by_label.get(label.as_str()) {
            plan.slots.insert(label.clone(), slot);
            continue;
        }
        if in_use >= capacity || label.len() > SCOPE_NAME_BYTES || plan.next == u32::MAX {
            plan.unassigned.push(label.clone());
            continue;
        }
        let slot = plan.next;
        plan.next += 1;
        in_use += 1;
        plan.slots.insert(label.clone(), slot);
        plan.add.push((slot, *kind, label.clone()));
    }
    plan
}

/// Decodes a `SCOPE_NAMES` value; `None` when it does not hold UTF-8 of a
/// possible length (then the slot's counts read as `overflow`).
pub fn decode_name(n: &ScopeName) -> Option<String> {
    let len = n.len as usize;
    if len > SCOPE_NAME_BYTES {
        return None;
    }
    std::str::from_utf8(&n.label[..len]).ok().map(str::to_owned)
}

fn encode_name(kind: u32, label: &str) -> ScopeName {
    let mut n = ScopeName {
        kind,
        len: label.len() as u32,
        label: [0; SCOPE_NAME_BYTES],
    };
    n.label[..label.len()].copy_from_slice(label.as_bytes());
    n
}

/// The slots that have counts in `SCOPE_COUNTS`.
pub fn counted_slots<T: std::borrow::Borrow<MapData>>(
    counts: &PerCpuHashMap<T, ScopeKey, ScopeCount>,
) -> BTreeSet<u32> {
    counts
        .keys()
        .filter_map(Result::ok)
        .map(|k| k.scope)
        .collect()
}

/// The names in use, slot -> label.
pub fn read_names<T: std::borrow::Borrow<MapData>>(
    names: &HashMap<T, u32, ScopeName>,
) -> BTreeMap<u32, String> {
    names
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(slot, n)| decode_name(&n).map(|l| (slot, l)))
        .collect()
}

/// The bitmap of levels `CONFIG[CFG_SCOPE_LEVELS]` holds for `targets`.
pub fn level_bits(targets: &[ScopeTarget]) -> u32 {
    targets
        .iter()
        .filter_map(|t| match t.place {
            ScopePlace::Cgroup { level, .. } if level < MAX_CGROUP_DEPTH => Some(1u32 << level),
            _ => None,
        })
        .fold(0, |a, b| a | b)
}

impl Datapath {
    fn map_of(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    fn counted(&mut self) -> Result<BTreeSet<u32>, DatapathError> {
        let counts: PerCpuHashMap<&MapData, ScopeKey, ScopeCount> =
            PerCpuHashMap::try_from(&*self.map_of(SCOPE_COUNTS)?).map_err(map_err(SCOPE_COUNTS))?;
        Ok(counted_slots(&counts))
    }

    /// Gives every configured entry of `targets` a slot (see the module
    /// docs) and makes `SCOPE_BY_CG`, `SCOPE_BY_IF` and the level bitmap
    /// say where each present one is. Returns the labels that got no slot.
    pub fn set_scopes(&mut self, targets: &[ScopeTarget]) -> Result<Vec<String>, DatapathError> {
        let names = {
            let map: HashMap<&MapData, u32, ScopeName> =
                HashMap::try_from(&*self.map_of(SCOPE_NAMES)?).map_err(map_err(SCOPE_NAMES))?;
            read_names(&map)
        };
        let counted = self.counted()?;
        let next = self.config_word(CFG_SCOPE_NEXT)?;
        let wanted: Vec<(String, u32)> = targets
            .iter()
            .map(|t| (t.label.clone(), t.place.kind()))
            .collect();
        let plan = plan_slots(
            &names,
            &counted,
            &wanted,
            next,
            SCOPE_NAMES_CAPACITY as usize,
        );
        // Names first (and the next number): the kernel may count under a
        // slot as soon as the id maps below point at it.
        {
            let mut map: HashMap<&mut MapData, u32, ScopeName> =
                HashMap::try_from(self.map_of(SCOPE_NAMES)?).map_err(map_err(SCOPE_NAMES))?;
            for (slot, kind, label) in &plan.add {
                map.insert(slot, encode_name(*kind, label), 0)
                    .map_err(map_err(SCOPE_NAMES))?;
            }
        }
        self.set_config_word(CFG_SCOPE_NEXT, plan.next)?;

        let slot_of = |t: &ScopeTarget| plan.slots.get(&t.label).copied();
        let cgroups: BTreeMap<u64, u32> = targets
            .iter()
            .filter_map(|t| match t.place {
                ScopePlace::Cgroup { id, .. } => slot_of(t).map(|s| (id, s)),
                _ => None,
            })
            .collect();
        let interfaces: BTreeMap<u32, u32> = targets
            .iter()
            .filter_map(|t| match t.place {
                ScopePlace::Interface { ifindex } => slot_of(t).map(|s| (ifindex, s)),
                _ => None,
            })
            .collect();
        for (what, n) in [
            ("scope cgroups", cgroups.len()),
            ("scope interfaces", interfaces.len()),
        ] {
            if n > SCOPE_TARGETS_CAPACITY as usize {
                return Err(DatapathError::Capacity {
                    what: what.into(),
                    need: n,
                    capacity: SCOPE_TARGETS_CAPACITY,
                });
            }
        }
        // The levels are widened before the map changes and narrowed after,
        // so no present entry's level is ever missing from the bitmap.
        let levels = level_bits(targets);
        let old_levels = self.config_word(CFG_SCOPE_LEVELS)?;
        self.set_config_word(CFG_SCOPE_LEVELS, levels | old_levels)?;
        replace(self.map_of(SCOPE_BY_CG)?, SCOPE_BY_CG, &cgroups)?;
        replace(self.map_of(SCOPE_BY_IF)?, SCOPE_BY_IF, &interfaces)?;
        self.set_config_word(CFG_SCOPE_LEVELS, levels)?;

        // A removed entry is no longer in the maps above: counted again
        // now, so a decision made for it meanwhile keeps its name.
        let counted = self.counted()?;
        let mut map: HashMap<&mut MapData, u32, ScopeName> =
            HashMap::try_from(self.map_of(SCOPE_NAMES)?).map_err(map_err(SCOPE_NAMES))?;
        for slot in plan.drop.iter().filter(|s| !counted.contains(s)) {
            map.remove(slot).map_err(map_err(SCOPE_NAMES))?;
        }
        Ok(plan.unassigned)
    }
}

/// Makes the hash map `data` hold exactly `wanted`.
fn replace<K, V>(
    data: &mut Map,
    name: &'static str,
    wanted: &BTreeMap<K, V>,
) -> Result<(), DatapathError>
where
    K: aya::Pod + Ord,
    V: aya::Pod + PartialEq,
{
    let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(data).map_err(map_err(name))?;
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for (k, v) in wanted {
        if map.get(k, 0).ok().as_ref() != Some(v) {
            map.insert(k, v, 0).map_err(map_err(name))?;
        }
    }
    for k in stale {
        map.remove(&k).map_err(map_err(name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(u32, &str)]) -> BTreeMap<u32, String> {
        list.iter().map(|(s, l)| (*s, (*l).to_owned())).collect()
    }

    fn wanted(list: &[&str]) -> Vec<(String, u32)> {
        list.iter()
            .map(|l| ((*l).to_owned(), SCOPE_NAME_CGROUP))
            .collect()
    }

    #[test]
    fn first_slots_start_at_one() {
        let p = plan_slots(&names(&[]), &BTreeSet::new(), &wanted(&["/a", "/b"]), 0, 8);
        assert_eq!(p.slots["/a"], 1);
        assert_eq!(p.slots["/b"], 2);
        assert_eq!(p.next, 3);
        assert_eq!(p.add.len(), 2);
        assert!(p.drop.is_empty() && p.unassigned.is_empty());
    }

    #[test]
    fn entries_keep_their_slots() {
        let p = plan_slots(
            &names(&[(4, "/a"), (7, "/b")]),
            &BTreeSet::from([4, 7]),
            &wanted(&["/b", "/a"]),
            8,
            8,
        );
        assert_eq!(p.slots["/a"], 4);
        assert_eq!(p.slots["/b"], 7);
        assert!(p.add.is_empty());
        assert_eq!(p.next, 8);
    }

    #[test]
    fn a_removed_entrys_slot_is_never_reused() {
        // "/a" removed, "/c" added: "/c" gets a new number even though
        // "/a" (with counts) is retired, and "/a" keeps its name.
        let p = plan_slots(
            &names(&[(1, "/a"), (2, "/b")]),
            &BTreeSet::from([1, 2]),
            &wanted(&["/b", "/c"]),
            3,
            8,
        );
        assert_eq!(p.slots["/c"], 3);
        assert!(!p.slots.contains_key("/a"));
        assert!(p.drop.is_empty(), "its counts keep its name");
        // Without counts its name goes, but its number stays retired.
        let p = plan_slots(
            &names(&[(1, "/a"), (2, "/b")]),
            &BTreeSet::from([2]),
            &wanted(&["/b", "/c"]),
            3,
            8,
        );
        assert_eq!(p.drop, vec![1]);
        assert_eq!(p.slots["/c"], 3);
        // The same label back later gets its old slot while named.
        let p = plan_slots(
            &names(&[(1, "/a"), (2, "/b")]),
            &BTreeSet::from([1, 2]),
            &wanted(&["/a"]),
            3,
            8,
        );
        assert_eq!(p.slots["/a"], 1);
        assert!(p.drop.is_empty(), "/b has counts");
    }

    #[test]
    fn no_room_leaves_a_new_entry_without_a_slot() {
        let p = plan_slots(
            &names(&[(1, "/a"), (2, "/old")]),
            &BTreeSet::from([1, 2]),
            &wanted(&["/a", "/new"]),
            3,
            2,
        );
        assert_eq!(p.unassigned, vec!["/new".to_owned()]);
        assert_eq!(p.next, 3);
        // A retired name without counts makes room.
        let p = plan_slots(
            &names(&[(1, "/a"), (2, "/old")]),
            &BTreeSet::from([1]),
            &wanted(&["/a", "/new"]),
            3,
            2,
        );
        assert!(p.unassigned.is_empty());
        assert_eq!(p.slots["/new"], 3);
    }

    #[test]
    fn too_long_a_label_gets_no_slot() {
        let long = format!("/{}", "x".repeat(SCOPE_NAME_BYTES));
        let p = plan_slots(&names(&[]), &BTreeSet::new(), &wanted(&[&long]), 1, 8);
        assert_eq!(p.unassigned, vec![long]);
    }

    #[test]
    fn names_round_trip() {
        let n = encode_name(SCOPE_NAME_INTERFACE, "eth0");
        assert_eq!(decode_name(&n).as_deref(), Some("eth0"));
        let mut bad = n;
        bad.len = SCOPE_NAME_BYTES as u32 + 1;
        assert_eq!(decode_name(&bad), None);
    }

    #[test]
    fn levels_are_a_bitmap() {
        let t = |label: &str, place| ScopeTarget {
            label: label.into(),
            place,
        };
        let targets = [
            t("/a", ScopePlace::Cgroup { id: 5, level: 2 }),
            t("/b", ScopePlace::Cgroup { id: 6, level: 2 }),
            t("/", ScopePlace::Cgroup { id: 1, level: 0 }),
            t("eth0", ScopePlace::Interface { ifindex: 3 }),
            t("/c", ScopePlace::AbsentCgroup),
        ];
        assert_eq!(level_bits(&targets), 0b101);
    }
}
