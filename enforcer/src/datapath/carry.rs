//! Counters continue across a layout upgrade: the counter maps of a
//! layout being retired are pinned again under the current layout and
//! summed with its own.
//!
//! A new layout gets maps of its own under `<pin_dir>/v<layout>/maps/`,
//! so without this its counters would start from zero while the old
//! layout's, which counted until the old links were detached, would be
//! removed with its directory. Instead, when the agent retires another
//! layout's directory (see `links::retire_other_versions`), before its
//! maps are unpinned, each of its counter maps ([`CARRIED_MAPS`]) is
//! pinned again (`BPF_OBJ_GET` the old pin, `BPF_OBJ_PIN` the fd) as
//! `<pin_dir>/v<current>/maps/carried-v<old>-<NAME>`; the maps it had
//! itself carried from an earlier layout move along under their own
//! names, so 8 -> 9 -> 10 keeps everything. Nothing writes a carried map
//! again (the programs that counted into it are detached); readers
//! ([`super::counters::CounterReader`], [`super::diagnostics::FaultCounts`])
//! open the current map and every carried one of the same name and report
//! the sums, per key.
//!
//! Why in `maps/` and not in a directory of their own: an agent of an
//! older release (layout 8, which knows nothing of carried maps) that
//! retires this layout after a downgrade unpins every file in `maps/` and
//! `links/` and then removes the directory. A sub-directory it does not
//! know would make that last step fail after it had already detached this
//! layout's links, and its failed start would then discard its own fresh
//! pins: nothing would stay attached. In `maps/` the carried pins go with
//! the rest. `enforcer uninstall` removes them the same way, and a restart
//! with the same layout keeps them (they are in the versioned directory).
//!
//! While both layouts' programs are attached (the upgrade's overlap,
//! between the new links being pinned and the old ones detached, a window
//! of milliseconds), a connection is counted by both, and so twice in the
//! sum.

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapInfo};
use enforcer_common::{
    BYTE_COUNTS, CONN_COUNTS, DP_ERRORS, EVENT_STATS, LAYOUT_VERSION, PKT_COUNTS,
};

use super::{DatapathError, compat, pinned, query};
use crate::paths::PinLayout;

/// The maps carried from a retired layout: counters only, whose values
/// only ever grow and whose sum across layouts still means something.
pub const CARRIED_MAPS: &[&str] = &[CONN_COUNTS, PKT_COUNTS, BYTE_COUNTS, EVENT_STATS, DP_ERRORS];

/// The layouts whose counter maps mean what this layout's do, index for
/// index; a map counted under any other layout is never carried (a
/// warning says so), even when its sizes happen to match.
///
/// Layout 8 (last at commit 50fd5af), 9 (last at a18bd5d), 10 (last at
/// a4d251d) and 11 differ only in the event record (9: `Event` gained
/// `direction` and `sport`, 80 to 88 bytes, so the `EVENTS` ring), in new
/// `CONFIG` words (the GeoIP aliases; the scope levels and next slot; the
/// allowed sample's switch) and in new maps (10: the counts by scope,
/// `SCOPE_COUNTS` and its companions, which are not carried: an older
/// layout has none, and its totals are reported under the scope `carried`;
/// 11: `ALLOWED_SAMPLE`, a sample, not a counter, which the agent has
/// written to its file and which is not carried either); everything a
/// counter's position depends on is the same: `counter_index` (hook *
/// families + family), `Hook`, `Family` and `Outcome` with their numbering,
/// the country index (`country.rs`: 26*26 codes plus unknown),
/// `CounterBlock`, the `EVENT_STATS` indices (`EVENT_SUPPRESSED_RATE`,
/// `EVENT_SUPPRESSED_FULL`) and `Fault` with its `FaultState`. A layout
/// that changes any of them must leave the older
/// layouts out of this list (or translate their counters).
const SAME_COUNTERS: &[u32] = &[8, 9, 10, LAYOUT_VERSION];

/// The pin-name prefix of a carried map (bpffs refuses dots in names).
const PREFIX: &str = "carried-v";

/// What [`carry`] did: how many maps were carried, by the layout that
/// counted into them.
pub type Carried = BTreeMap<u32, usize>;

/// The pin name of map `name` carried from `layout`.
pub fn carried_name(layout: u32, name: &str) -> String {
    format!("{PREFIX}{layout}-{name}")
}

/// The layout and map of a carried pin name; `None` for any other name.
fn parse_carried(file: &str) -> Option<(u32, &'static str)> {
    let (digits, name) = file.strip_prefix(PREFIX)?.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let layout = digits.parse().ok()?;
    let name = CARRIED_MAPS.iter().copied().find(|m| *m == name)?;
    Some((layout, name))
}

/// A carried map pinned in a layout's `maps/` directory.
struct CarriedPin {
    layout: u32,
    name: &'static str,
    path: PathBuf,
}

/// The carried pins in `maps`, in name order; none when it does not exist.
fn carried_pins(maps: &Path) -> io::Result<Vec<CarriedPin>> {
    let entries = match fs::read_dir(maps) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        if let Some((layout, name)) = file.to_str().and_then(parse_carried) {
            out.push(CarriedPin {
                layout,
                name,
                path: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Pins the counter maps of the layout directory `old_dir` (layout
/// `old_layout`, being retired: nothing else pins them again), and the
/// maps it had carried itself, under `pins.maps`. Never fails: counters
/// are not enforcement, so a map that cannot be carried is a warning and
/// the retirement goes on.
pub fn carry(pins: &PinLayout, old_dir: &Path, old_layout: u32) -> Carried {
    let maps = old_dir.join("maps");
    let mut sources: Vec<CarriedPin> = CARRIED_MAPS
        .iter()
        .map(|&name| CarriedPin {
            layout: old_layout,
            name,
            path: maps.join(name),
        })
        .filter(|p| p.path.exists())
        .collect();
    match carried_pins(&maps) {
        Ok(more) => sources.extend(more),
        Err(e) => {
            tracing::warn!(path = %maps.display(), error = %e, "cannot list the counters another layout carried; they start again from zero");
        }
    }
    let mut carried = Carried::new();
    for source in sources {
        if !SAME_COUNTERS.contains(&source.layout) {
            tracing::warn!(
                map = source.name,
                layout = source.layout,
                "not carried: layout {} counts differently from layout {LAYOUT_VERSION}",
                source.layout
            );
            continue;
        }
        if let Err(e) = compat::check_as(&source.path, source.name) {
            tracing::warn!(map = source.name, layout = source.layout, error = %e, "not carried");
            continue;
        }
        let to = pins.maps.join(carried_name(source.layout, source.name));
        match pin_again(&source.path, &to) {
            Ok(()) => *carried.entry(source.layout).or_default() += 1,
            Err(detail) => {
                tracing::warn!(map = source.name, layout = source.layout, to = %to.display(), %detail, "not carried");
            }
        }
    }
    carried
}

/// Pins the map pinned at `from` at `to` as well. A pin already at `to`
/// is accepted when it is that very map (a retirement interrupted after
/// carrying and before removing); another map there is kept and `from`
/// is not carried, so nothing is counted twice.
fn pin_again(from: &Path, to: &Path) -> Result<(), String> {
    let fd = pinned::obj_get(from, 0).map_err(|e| format!("opening {}: {e}", from.display()))?;
    if to.exists() {
        let id = |p: &Path| MapInfo::from_pin(p).map(|i| i.id()).ok();
        return match (id(from), id(to)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            _ => Err("another map is already pinned there".into()),
        };
    }
    query::obj_pin(fd.as_fd(), to).map_err(|e| format!("pinning: {e}"))
}

/// Opens, read-only, every map named `name` carried into the datapath
/// pinned under `pin_dir`, with the layout each was counted under. A
/// carried pin that does not match this layout's map is left out with a
/// warning, never misread.
pub fn open_carried(pin_dir: &Path, name: &'static str) -> Result<Vec<(u32, Map)>, DatapathError> {
    let maps = PinLayout::new(pin_dir).maps;
    let pins = carried_pins(&maps).map_err(|e| DatapathError::Pin {
        path: maps.clone(),
        detail: format!("listing the carried counters: {e}"),
    })?;
    let mut out = Vec::new();
    for pin in pins.into_iter().filter(|p| p.name == name) {
        if !SAME_COUNTERS.contains(&pin.layout) {
            tracing::warn!(path = %pin.path.display(), "left out: counted under a layout that counts differently");
            continue;
        }
        if let Err(e) = compat::check_as(&pin.path, name) {
            tracing::warn!(path = %pin.path.display(), error = %e, "left out");
            continue;
        }
        let map = pinned::open_map_at(&pin.path, pin_dir, name, pinned::Access::ReadOnly)?;
        out.push((pin.layout, map));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_names_parse_back() {
        for &name in CARRIED_MAPS {
            let pin = carried_name(8, name);
            assert!(
                !pin.contains('.') && !pin.contains('/'),
                "bpffs refuses {pin:?}"
            );
            assert_eq!(parse_carried(&pin), Some((8, name)));
        }
        for other in [
            "CONN_COUNTS",
            "carried-v-CONN_COUNTS",
            "carried-vx-CONN_COUNTS",
            "carried-v8-CONFIG",
            "carried-v8-CONN_COUNTS-x",
            "carried-v99999999999-CONN_COUNTS",
        ] {
            assert_eq!(parse_carried(other), None, "{other}");
        }
    }

    #[test]
    fn this_layout_carries_its_own_counters() {
        assert!(SAME_COUNTERS.contains(&LAYOUT_VERSION));
    }
}
