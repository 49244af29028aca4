//! Writing one policy slot: rules and GeoIP tries per family and the
//! approval table, as a diff against what the slot holds, then a read-back
//! verification before the caller flips the slot.

use std::{collections::BTreeMap, time::Instant};

use aya::{
    Ebpf, Pod,
    maps::{
        Array, MapData,
        lpm_trie::{Key, LpmTrie},
    },
};
use enforcer_common::{
    COUNTRY_SLOTS, GEO_CAPACITY, GEO4, GEO6, GeoEntry, POLICY, RULES_CAPACITY, RULES4, RULES6, Rule,
};
use geoip::{CountryCode, Diff, GeoTable, Table};
use ipnetwork::{Ipv4Network, Ipv6Network};

use super::{DatapathError, map_err};
use crate::policy::{CompiledPolicy, country_index};

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
    pub geo_v4: TableDelta,
    pub geo_v6: TableDelta,
    pub seconds: f64,
}

/// How full the per-slot maps are for a policy of these sizes: entries,
/// capacity and the fraction, per map (each of the two slots has its own
/// maps of this capacity).
pub fn map_fill(
    geo_v4: usize,
    geo_v6: usize,
    rules_v4: usize,
    rules_v6: usize,
) -> serde_json::Value {
    let one = |entries: usize, capacity: u32| {
        serde_json::json!({
            "entries": entries,
            "capacity": capacity,
            "fill": entries as f64 / f64::from(capacity),
        })
    };
    serde_json::json!({
        "geo_ipv4": one(geo_v4, GEO_CAPACITY),
        "geo_ipv6": one(geo_v6, GEO_CAPACITY),
        "rules_ipv4": one(rules_v4, RULES_CAPACITY),
        "rules_ipv6": one(rules_v6, RULES_CAPACITY),
    })
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
/// keys them; the GeoIP tables stay in their compact form.
pub struct SlotContents<'a> {
    rules_v4: Desired<[u8; 4], Rule>,
    rules_v6: Desired<[u8; 16], Rule>,
    geo: &'a GeoTable,
    approval: &'a [u32],
}

impl<'a> SlotContents<'a> {
    pub fn new(p: &'a CompiledPolicy) -> Self {
        Self {
            rules_v4: rules_v4(p),
            rules_v6: rules_v6(p),
            geo: &p.geo,
            approval: &p.approval,
        }
    }
}

/// An LPM key of one family, from a prefix.
trait LpmKey: Copy {
    type Data: Pod + Ord + std::fmt::Debug;
    fn key(&self) -> (Self::Data, u32);
}

impl LpmKey for Ipv4Network {
    type Data = [u8; 4];
    fn key(&self) -> ([u8; 4], u32) {
        (self.network().octets(), self.prefix() as u32)
    }
}

impl LpmKey for Ipv6Network {
    type Data = [u8; 16];
    fn key(&self) -> ([u8; 16], u32) {
        (self.network().octets(), self.prefix() as u32)
    }
}

fn geo_entry(prefix_len: u32, country: CountryCode) -> GeoEntry {
    GeoEntry {
        country: country_index(country),
        prefix_len: prefix_len as u16,
    }
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

/// Makes a GeoIP trie hold `new`: by applying `held.diff(new)` when the
/// trie is known to hold `held`, else by reading it back.
fn write_geo<A>(
    ebpf: &mut Ebpf,
    name: &'static str,
    new: &Table<A>,
    held: Option<&Table<A>>,
) -> Result<TableDelta, DatapathError>
where
    A: geoip::Family,
    A::Net: LpmKey,
{
    if let Some(held) = held {
        let diff = held.diff(new);
        match apply_diff::<A>(ebpf, name, &diff) {
            Ok(()) => {
                return Ok(TableDelta {
                    removed: diff.removed.len(),
                    upserted: diff.upserted.len(),
                    total: new.len(),
                });
            }
            // The trie is not what this agent believes it wrote: recover by
            // reading it back, which is slower but exact.
            Err(e) => {
                tracing::warn!(map = name, error = %e, "slot differs from what was written; rewriting it from a read-back")
            }
        }
    }
    let desired: Desired<<A::Net as LpmKey>::Data, GeoEntry> = new
        .prefixes()
        .map(|(n, c)| {
            let (data, len) = n.key();
            ((data, len), geo_entry(len, c))
        })
        .collect();
    write_trie(ebpf, name, &desired)
}

fn apply_diff<A>(
    ebpf: &mut Ebpf,
    name: &'static str,
    diff: &Diff<A::Net>,
) -> Result<(), DatapathError>
where
    A: geoip::Family,
    A::Net: LpmKey,
{
    let mut trie = trie::<<A::Net as LpmKey>::Data, GeoEntry>(ebpf, name)?;
    for n in &diff.removed {
        let (data, len) = n.key();
        trie.remove(&Key::new(len, data)).map_err(map_err(name))?;
    }
    for (n, c) in &diff.upserted {
        let (data, len) = n.key();
        trie.insert(&Key::new(len, data), geo_entry(len, *c), 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

/// Writes a whole policy into `slot` (which must not be active). `held` is
/// the GeoIP table this agent last wrote into the slot, when it knows it:
/// then only the difference is written (a daily refresh costs what changed);
/// otherwise (an adopted slot) the slot is read back and diffed.
pub fn write(
    ebpf: &mut Ebpf,
    slot: u32,
    c: &SlotContents<'_>,
    held: Option<&GeoTable>,
) -> Result<SlotReport, DatapathError> {
    let started = Instant::now();
    let s = slot as usize;
    let mut report = SlotReport {
        slot,
        rules_v4: write_trie(ebpf, RULES4[s], &c.rules_v4)?,
        rules_v6: write_trie(ebpf, RULES6[s], &c.rules_v6)?,
        geo_v4: write_geo(ebpf, GEO4[s], &c.geo.v4, held.map(|h| &h.v4))?,
        geo_v6: write_geo(ebpf, GEO6[s], &c.geo.v6, held.map(|h| &h.v6))?,
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

/// How many GeoIP prefixes per family are read back to verify a slot.
const VERIFY_SAMPLES: usize = 2048;

/// Reads the slot back: the whole approval table and rules, and an evenly
/// spaced sample of each GeoIP table (exact-prefix lookups).
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
    verify_geo(ebpf, GEO4[s], &c.geo.v4).map_err(fail)?;
    verify_geo(ebpf, GEO6[s], &c.geo.v6).map_err(fail)?;
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

/// An evenly spaced sample of [`VERIFY_SAMPLES`] prefixes of the table.
fn verify_geo<A>(ebpf: &mut Ebpf, name: &'static str, table: &Table<A>) -> Result<(), String>
where
    A: geoip::Family,
    A::Net: LpmKey,
{
    let step = (table.len() / VERIFY_SAMPLES).max(1);
    let sample = table.prefixes().step_by(step).map(|(n, c)| {
        let (data, len) = n.key();
        ((data, len), geo_entry(len, c))
    });
    verify_entries(ebpf, name, sample)
}
