//! Writing one policy slot: rules tries per family, the GeoIP flat tables
//! (`geo.rs`) and the approval table, as a diff against what the slot holds,
//! then a read-back verification before the caller flips the slot.

use std::{collections::BTreeMap, time::Instant};

use aya::{
    Ebpf, Pod,
    maps::{
        Array, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    COUNTRY_SLOTS, GEO_CAPACITY, POLICY, RULE_BITMAP, RULE_BITMAP_WORDS, RULES_CAPACITY, RULES4,
    RULES6, Rule,
};

use super::{
    DatapathError,
    geo::{self, Flat, FlatDelta},
    map_err,
};
use crate::policy::CompiledPolicy;

/// What writing one table changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableDelta {
    pub removed: usize,
    pub upserted: usize,
    /// Entries the table holds afterwards.
    pub total: usize,
}

/// What writing a slot did.
#[derive(Clone, Debug, Default)]
pub struct SlotReport {
    pub slot: u32,
    pub generation: u32,
    pub rules_v4: TableDelta,
    pub rules_v6: TableDelta,
    /// GeoIP prefixes per family (what the flat tables encode).
    pub geo_v4: usize,
    pub geo_v6: usize,
    /// What writing the flat tables changed, and how long it took.
    pub geo: FlatDelta,
    pub geo_build_seconds: f64,
    pub geo_verify_seconds: f64,
    pub seconds: f64,
}

/// Refuses a policy that does not fit the maps, before anything is written.
pub fn check_capacity(policy: &CompiledPolicy) -> Result<(), DatapathError> {
    let checks = [
        ("GeoIP IPv4 table", policy.geo.v4.len(), GEO_CAPACITY),
        ("GeoIP IPv6 table", policy.geo.v6.len(), GEO_CAPACITY),
        (
            "IPv4 exception rules",
            policy.rules_v4.len(),
            RULES_CAPACITY,
        ),
        (
            "IPv6 exception rules",
            policy.rules_v6.len(),
            RULES_CAPACITY,
        ),
    ];
    for (what, need, capacity) in checks {
        if need > capacity as usize {
            return Err(DatapathError::Capacity {
                what: what.to_owned(),
                need,
                capacity,
            });
        }
    }
    Ok(())
}

type Desired<K, V> = BTreeMap<(K, u32), V>;

/// What a slot must hold, computed once per install and used both to write
/// and to verify. The exception rules are small and keyed as the kernel
/// keys them; the GeoIP tables as the kernel holds them.
pub struct SlotContents<'a> {
    rules_v4: Desired<[u8; 4], Rule>,
    rules_v6: Desired<[u8; 16], Rule>,
    /// `RULE_BITMAP` of each family (IPv4, IPv6).
    rules16: [Box<[u64; RULE_BITMAP_WORDS]>; 2],
    geo: Flat,
    geo_v4: usize,
    geo_v6: usize,
    approval: &'a [u32],
}

impl<'a> SlotContents<'a> {
    /// Builds the flat tables; a table that does not fit is refused here,
    /// before anything is written.
    pub fn new(p: &'a CompiledPolicy) -> Result<Self, DatapathError> {
        let rules_v4 = rules_v4(p);
        let rules_v6 = rules_v6(p);
        let rules16 = [
            rules16(rules_v4.keys().map(|(data, len)| (data.as_slice(), *len))),
            rules16(rules_v6.keys().map(|(data, len)| (data.as_slice(), *len))),
        ];
        Ok(Self {
            rules_v4,
            rules_v6,
            rules16,
            geo: geo::build(&p.geo)?,
            geo_v4: p.geo.v4.len(),
            geo_v6: p.geo.v6.len(),
            approval: &p.approval,
        })
    }
}

/// The `RULE_BITMAP` bitmap of one family's rules (address bytes, prefix
/// length): every first-16-bits value a rule's prefix overlaps.
fn rules16<'k>(rules: impl Iterator<Item = (&'k [u8], u32)>) -> Box<[u64; RULE_BITMAP_WORDS]> {
    let mut bits = Box::new([0u64; RULE_BITMAP_WORDS]);
    for (data, len) in rules {
        let first = u32::from(data[0]) << 8 | u32::from(data[1]);
        // A prefix of 16 bits or more sits in one value; a shorter one
        // covers 2^(16 - len) of them.
        let span = 1u32 << 16u32.saturating_sub(len);
        let first = first & !(span - 1);
        for v in first..first + span {
            bits[v as usize / 64] |= 1 << (v % 64);
        }
    }
    bits
}

fn rules_v4(p: &CompiledPolicy) -> Desired<[u8; 4], Rule> {
    p.rules_v4
        .iter()
        .map(|(n, r)| ((n.network().octets(), n.prefix() as u32), *r))
        .collect()
}

fn rules_v6(p: &CompiledPolicy) -> Desired<[u8; 16], Rule> {
    p.rules_v6
        .iter()
        .map(|(n, r)| ((n.network().octets(), n.prefix() as u32), *r))
        .collect()
}

fn trie<'a, K: Pod, V: Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'a mut MapData, K, V>, DatapathError> {
    let map = ebpf.map_mut(name).ok_or(DatapathError::MissingMap(name))?;
    LpmTrie::try_from(map).map_err(map_err(name))
}

/// Makes the trie `name` hold exactly `desired`, touching only what differs.
fn write_trie<K: Pod + Ord, V: Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    desired: &Desired<K, V>,
) -> Result<TableDelta, DatapathError> {
    let mut trie = trie::<K, V>(ebpf, name)?;
    let mut existing: Desired<K, V> = BTreeMap::new();
    for item in trie.iter() {
        let (key, value) = item.map_err(map_err(name))?;
        existing.insert((key.data(), key.prefix_len()), value);
    }
    let mut delta = TableDelta {
        total: desired.len(),
        ..TableDelta::default()
    };
    // Removals first, so a nearly full trie never overflows mid-update.
    for (data, prefix_len) in existing.keys().filter(|k| !desired.contains_key(k)) {
        trie.remove(&Key::new(*prefix_len, *data))
            .map_err(map_err(name))?;
        delta.removed += 1;
    }
    for ((data, prefix_len), value) in desired {
        if existing.get(&(*data, *prefix_len)) != Some(value) {
            trie.insert(&Key::new(*prefix_len, *data), value, 0)
                .map_err(map_err(name))?;
            delta.upserted += 1;
        }
    }
    Ok(delta)
}

/// Writes a whole policy into `slot` (which must not be active), each table
/// as a diff against what the slot holds (a daily refresh costs what
/// changed).
pub fn write(
    ebpf: &mut Ebpf,
    slot: u32,
    c: &SlotContents<'_>,
) -> Result<SlotReport, DatapathError> {
    let started = Instant::now();
    let s = slot as usize;
    let rules_v4 = write_trie(ebpf, RULES4[s], &c.rules_v4)?;
    let rules_v6 = write_trie(ebpf, RULES6[s], &c.rules_v6)?;
    {
        let map = ebpf
            .map_mut(RULE_BITMAP)
            .ok_or(DatapathError::MissingMap(RULE_BITMAP))?;
        let mut bits: Array<_, [u64; RULE_BITMAP_WORDS]> =
            Array::try_from(map).map_err(map_err(RULE_BITMAP))?;
        for (family, want) in c.rules16.iter().enumerate() {
            bits.set(slot * 2 + family as u32, **want, 0)
                .map_err(map_err(RULE_BITMAP))?;
        }
    }
    let geo = geo::write(ebpf, slot, &c.geo)?;
    let mut report = SlotReport {
        slot,
        rules_v4,
        rules_v6,
        geo,
        geo_v4: c.geo_v4,
        geo_v6: c.geo_v6,
        geo_build_seconds: c.geo.build_seconds,
        ..SlotReport::default()
    };
    let map = ebpf
        .map_mut(POLICY)
        .ok_or(DatapathError::MissingMap(POLICY))?;
    let mut approval: Array<_, u32> = Array::try_from(map).map_err(map_err(POLICY))?;
    for (country, value) in c.approval.iter().enumerate() {
        let index = slot * COUNTRY_SLOTS as u32 + country as u32;
        approval.set(index, value, 0).map_err(map_err(POLICY))?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Reads the slot back: the whole approval table, rules and GeoIP tables.
pub fn verify(ebpf: &mut Ebpf, slot: u32, c: &SlotContents<'_>) -> Result<(), DatapathError> {
    let fail = |detail: String| DatapathError::Verify { slot, detail };
    {
        let map = ebpf
            .map_mut(POLICY)
            .ok_or(DatapathError::MissingMap(POLICY))?;
        let approval: Array<_, u32> = Array::try_from(map).map_err(map_err(POLICY))?;
        for (country, want) in c.approval.iter().enumerate() {
            let index = slot * COUNTRY_SLOTS as u32 + country as u32;
            let got = approval.get(&index, 0).map_err(map_err(POLICY))?;
            if got != *want {
                return Err(fail(format!("POLICY[{index}] is {got}, expected {want}")));
            }
        }
    }
    let s = slot as usize;
    verify_trie(ebpf, RULES4[s], &c.rules_v4).map_err(fail)?;
    verify_trie(ebpf, RULES6[s], &c.rules_v6).map_err(fail)?;
    {
        let map = ebpf
            .map_mut(RULE_BITMAP)
            .ok_or(DatapathError::MissingMap(RULE_BITMAP))?;
        let bits: Array<_, [u64; RULE_BITMAP_WORDS]> =
            Array::try_from(map).map_err(map_err(RULE_BITMAP))?;
        for (family, want) in c.rules16.iter().enumerate() {
            let index = slot * 2 + family as u32;
            let got = bits.get(&index, 0).map_err(map_err(RULE_BITMAP))?;
            if got != **want {
                return Err(fail(format!(
                    "{RULE_BITMAP}[{index}] differs from what was written"
                )));
            }
        }
    }
    geo::verify(ebpf, slot, &c.geo).map_err(fail)?;
    Ok(())
}

/// Exact-key lookups of `entries`.
fn verify_entries<K: Pod + std::fmt::Debug, V: Pod + PartialEq + std::fmt::Debug>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: impl Iterator<Item = ((K, u32), V)>,
) -> Result<(), String> {
    let trie = trie::<K, V>(ebpf, name).map_err(|e| e.to_string())?;
    for ((data, prefix_len), want) in entries {
        match trie.get(&Key::new(prefix_len, data), 0) {
            Ok(got) if got == want => {}
            Ok(got) => {
                return Err(format!(
                    "{name} {data:?}/{prefix_len} holds {got:?}, expected {want:?}"
                ));
            }
            Err(e) => return Err(format!("{name} {data:?}/{prefix_len}: {e}")),
        }
    }
    Ok(())
}

fn verify_trie<K: Pod + Ord + std::fmt::Debug, V: Pod + PartialEq + std::fmt::Debug>(
    ebpf: &mut Ebpf,
    name: &'static str,
    desired: &Desired<K, V>,
) -> Result<(), String> {
    verify_entries(ebpf, name, desired.iter().map(|(k, v)| (*k, *v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(bits: &[u64; RULE_BITMAP_WORDS]) -> Vec<u32> {
        (0..1u32 << 16)
            .filter(|&v| bits[v as usize / 64] >> (v % 64) & 1 != 0)
            .collect()
    }

    #[test]
    fn rules16_covers_every_rule_and_nothing_else() {
        let rules: [(&[u8], u32); 3] = [
            (&[10, 0, 0, 0], 8),
            (&[192, 168, 1, 0], 24),
            (&[172, 16, 0, 0], 12),
        ];
        let bits = rules16(rules.into_iter());
        let mut want: Vec<u32> = (0x0a00..=0x0aff).chain(0xac10..=0xac1f).collect();
        want.push(0xc0a8);
        want.sort_unstable();
        assert_eq!(set(&bits), want);

        let all = rules16([(&[0u8; 16][..], 0)].into_iter());
        assert_eq!(set(&all).len(), 1 << 16);
        let host = rules16([(&[0x20, 0x01, 0x0d, 0xb8][..], 128)].into_iter());
        assert_eq!(set(&host), vec![0x2001]);
        assert!(set(&rules16(std::iter::empty())).is_empty());
    }
}
