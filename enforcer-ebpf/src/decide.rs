//! The one decision every hook makes.
//!
//! Order (see docs/architecture.md, "The decision, in kernel"):
//! 1. the destination address; an IPv4-mapped IPv6 address is decided as IPv4;
//! 2. the exception rules of the active slot: configured deny and allow CIDRs,
//!    site networks and the built-in never-geolocated ranges, folded by the
//!    agent into one LPM trie per family so one lookup yields the first class
//!    in precedence order (skipped when the slot's `RULE_BITMAP` bitmap says no
//!    rule overlaps the destination's first 16 bits);
//! 3. the GeoIP flat tables of the active slot -> country index (0 unknown;
//!    `geo.rs`); an IPv6 address the slot's database locates through its
//!    IPv4 tree (6to4, Teredo, IPv4-compatible) by the IPv4 address it
//!    carries;
//! 4. the policy table of the active slot [country] -> approved or not (entry
//!    0 holds the configured `unknown` policy);
//! 5. the mode (the global one, or a per-cgroup override, which the hook
//!    knows how to find): enforce refuses, observe lets through as "would
//!    deny".

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use enforcer_common::{
    APPROVED, CFG_GEO_ALIASES, CFG_SLOT, COUNTRY_SLOTS, DEST_CACHE_SLOTS, DestCacheEntry, Family,
    Fault, Mode, Outcome, RULE_BITMAP_WORDS, Rule, RuleKind, Source, UNKNOWN_COUNTRY, lookup,
};

use crate::{
    diagnostics::report,
    geo::{country4, country6},
    maps::{DEST_CACHE, POLICY, RULE_BITMAP, RULES4_0, RULES4_1, RULES6_0, RULES6_1, config},
};

/// What the datapath concluded about one destination.
#[derive(Clone, Copy)]
pub struct Decision {
    pub outcome: Outcome,
    /// Country index (0 when unknown or not geolocated).
    pub country: u16,
    /// The family the destination was decided as.
    pub family: Family,
    /// What decided it.
    pub source: Source,
    /// The mode it was decided under (only consulted when not approved;
    /// the global mode otherwise).
    pub mode: Mode,
}

impl Decision {
    /// Whether the hook must refuse the operation.
    #[inline(always)]
    pub fn refuses(&self) -> bool {
        self.outcome == Outcome::Denied
    }

    /// Whether the decision is worth an event: refused or would be.
    #[inline(always)]
    pub fn reportable(&self) -> bool {
        matches!(self.outcome, Outcome::Denied | Outcome::WouldDeny)
    }
}

/// A destination as the hooks see it, bytes in network order.
#[derive(Clone, Copy)]
pub enum Dest {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Dest {
    /// An IPv6 destination, or the IPv4 address it maps when it is
    /// `::ffff:a.b.c.d`: a dual-stack socket connects to those over IPv4,
    /// and only the connect6 hook sees them.
    #[inline(always)]
    pub fn from_v6(b: [u8; 16]) -> Dest {
        let mapped = b[0] | b[1] | b[2] | b[3] | b[4] | b[5] | b[6] | b[7] | b[8] | b[9] == 0
            && b[10] == 0xff
            && b[11] == 0xff;
        if mapped {
            Dest::V4([b[12], b[13], b[14], b[15]])
        } else {
            Dest::V6(b)
        }
    }

    /// The address as 16 bytes, IPv4 in the first four (events, caches).
    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        match *self {
            Dest::V4(a) => [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            Dest::V6(a) => a,
        }
    }
}

/// [`decide`], through the per-CPU cache of allowed and exempt verdicts
/// (`DEST_CACHE`, layout in `enforcer_common::layout`): a hit costs one
/// cache line instead of the exception trie and the GeoIP tables, which a
/// packet between two of its flow's packets has mostly left out of the CPU
/// caches. `generation` is `CONFIG[CFG_GENERATION]`, read by the caller
/// before anything else (see `sock_addr.rs`); an entry made under another
/// generation never answers. Only verdicts that do not depend on the mode
/// or the caller are cached, so a hit is the same for every cgroup. The
/// flag says whether it was decided (a miss), for the allowed sample
/// (sample.rs), which cached verdicts do not update.
#[inline(always)]
pub fn decide_cached(
    dest: Dest,
    generation: u32,
    mode: impl FnOnce(u32) -> Mode,
) -> (Decision, bool) {
    let probe = CacheProbe::new(dest, generation);
    match probe.hit() {
        Some(d) => (d, false),
        None => (probe.decide(mode), true),
    }
}

/// A destination's entry of `DEST_CACHE`, looked up once: [`Self::hit`]
/// answers from it, [`Self::decide`] decides and fills it. Split from
/// [`decide_cached`] so a hook can try the cache before anything dearer
/// (`skb.rs` does, before the socket's storage).
pub struct CacheProbe {
    dest: Dest,
    entry: Option<*mut DestCacheEntry>,
    words: [u64; 2],
    family: Family,
    generation: u32,
}

impl CacheProbe {
    #[inline(always)]
    pub fn new(dest: Dest, generation: u32) -> CacheProbe {
        let (family, words) = match dest {
            Dest::V4(a) => (Family::Ipv4, [u64::from(u32::from_ne_bytes(a)), 0]),
            Dest::V6(a) => (
                Family::Ipv6,
                [
                    u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
                    u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
                ],
            ),
        };
        let entry = if generation == 0 {
            None
        } else {
            DEST_CACHE.get_ptr_mut(cache_slot(words))
        };
        CacheProbe {
            dest,
            entry,
            words,
            family,
            generation,
        }
    }

    /// The cached verdict, when the entry holds this destination's under
    /// this generation (always allowed or exempt).
    #[inline(always)]
    pub fn hit(&self) -> Option<Decision> {
        let e = self.entry?;
        // SAFETY: a valid per-CPU entry from a successful lookup; volatile
        // reads, so the sequence is read before and after the fields.
        unsafe {
            let seq = read_volatile(&(*e).seq);
            let outcome = read_volatile(&(*e).outcome);
            let country = read_volatile(&(*e).country);
            let source = read_volatile(&(*e).source);
            let same = seq & 1 == 0
                && read_volatile(&(*e).generation) == self.generation
                && read_volatile(&(*e).family) == self.family as u8
                && read_volatile(&(*e).daddr[0]) == self.words[0]
                && read_volatile(&(*e).daddr[1]) == self.words[1]
                && read_volatile(&(*e).seq) == seq;
            if same
                && let Some(outcome @ (Outcome::Allowed | Outcome::Exempt)) =
                    Outcome::from_raw(outcome as u32)
                && let Some(source) = Source::from_raw(source as u32)
            {
                return Some(Decision {
                    outcome,
                    country,
                    family: self.family,
                    source,
                    mode: Mode::Observe,
                });
            }
        }
        None
    }

    /// [`decide`]s the probe's destination and caches the verdict when it
    /// is allowed or exempt.
    #[inline(always)]
    pub fn decide(self, mode: impl FnOnce(u32) -> Mode) -> Decision {
        let d = decide(self.dest, mode);
        if let Some(e) = self.entry
            && !d.reportable()
        {
            // SAFETY: as in `hit`; the odd sequence marks the entry as being
            // written for a reader that preempted this program on this CPU.
            unsafe {
                let seq = read_volatile(&(*e).seq) | 1;
                write_volatile(&mut (*e).seq, seq);
                write_volatile(&mut (*e).generation, self.generation);
                write_volatile(&mut (*e).daddr[0], self.words[0]);
                write_volatile(&mut (*e).daddr[1], self.words[1]);
                write_volatile(&mut (*e).country, d.country);
                write_volatile(&mut (*e).outcome, d.outcome as u8);
                write_volatile(&mut (*e).family, self.family as u8);
                write_volatile(&mut (*e).source, d.source as u8);
                write_volatile(&mut (*e).seq, seq.wrapping_add(1));
            }
        }
        d
    }
}

/// The cache entry of a destination: a multiplicative hash of its words.
#[inline(always)]
fn cache_slot(words: [u64; 2]) -> u32 {
    let x = words[0] ^ words[1].rotate_left(29);
    let x = (x ^ (x >> 32)) as u32;
    (x.wrapping_mul(0x9e37_79b1) >> 24) & (DEST_CACHE_SLOTS - 1)
}

/// Decides a destination against the active slot. `mode(slot)` gives the
/// mode that applies to this caller under that slot; it is only asked for
/// when the destination is not approved (the per-cgroup override walk costs
/// lookups).
#[inline(always)]
pub fn decide(dest: Dest, mode: impl FnOnce(u32) -> Mode) -> Decision {
    let slot = config(CFG_SLOT) & 1;
    // One generic body per family: an enum holding either family's key
    // would leave the smaller variant's spare bytes undefined, and LLVM may
    // copy them, which the verifier rejects as reading an uninitialised
    // register.
    match dest {
        Dest::V4(a) => decide_in(
            slot,
            Family::Ipv4,
            [&RULES4_0, &RULES4_1],
            Key::new(32, a),
            mode,
        ),
        Dest::V6(a) => decide_in(
            slot,
            Family::Ipv6,
            [&RULES6_0, &RULES6_1],
            Key::new(128, a),
            mode,
        ),
    }
}

/// An address of one family and its GeoIP lookup. A trait rather than a
/// closure: LLVM keeps a closure as a BPF-to-BPF call whose frame adds to
/// the caller's against the verifier's 512-byte limit, and the address is
/// read from the LPM key rather than copied.
trait Geo: Copy {
    fn country(self, slot: u32) -> u16;
    /// The address's first 16 bits, the bit of `RULE_BITMAP`.
    fn first16(self) -> u32;
}

impl Geo for [u8; 4] {
    #[inline(always)]
    fn country(self, slot: u32) -> u16 {
        country4(slot, self)
    }

    #[inline(always)]
    fn first16(self) -> u32 {
        u32::from(self[0]) << 8 | u32::from(self[1])
    }
}

impl Geo for [u8; 16] {
    /// An address in a range the slot's database locates through its IPv4
    /// table (6to4, Teredo, IPv4-compatible; `CFG_GEO_ALIASES`) is looked
    /// up by the IPv4 address it carries, as the database does; only the
    /// GeoIP step changes: the exception rules matched the IPv6 address,
    /// and counters and events keep it as IPv6. The `CONFIG` word is read
    /// only for addresses in those ranges.
    #[inline(always)]
    fn country(self, slot: u32) -> u16 {
        if lookup::may_alias(&self) {
            let word = if slot == 0 {
                CFG_GEO_ALIASES[0]
            } else {
                CFG_GEO_ALIASES[1]
            };
            if let Some((_, v4)) = lookup::aliased_v4(config(word), &self) {
                return country4(slot, v4);
            }
        }
        country6(slot, &self)
    }

    #[inline(always)]
    fn first16(self) -> u32 {
        u32::from(self[0]) << 8 | u32::from(self[1])
    }
}

/// Whether a rule of `family` in `slot` may match an address starting with
/// `first16` (layout: `enforcer_common::RULE_BITMAP`). An unreadable bitmap
/// says yes: the trie then decides, as it would without the bitmap.
#[inline(always)]
fn may_have_rule(slot: u32, family: Family, first16: u32) -> bool {
    let index = slot * 2 + family as u32;
    match RULE_BITMAP.get(index) {
        Some(bits) => {
            let word = bits[(first16 as usize / 64) % RULE_BITMAP_WORDS];
            word >> (first16 % 64) & 1 != 0
        }
        None => true,
    }
}

#[inline(always)]
fn decide_in<K: Geo>(
    slot: u32,
    family: Family,
    rules: [&LpmTrie<K, Rule>; 2],
    key: Key<K>,
    mode: impl FnOnce(u32) -> Mode,
) -> Decision {
    // One call site per slot's trie, as in geo.rs `country4`: a call that
    // may see either map goes through `bpf_map_lookup_elem`'s indirect
    // call instead of the trie's lookup directly.
    let rule = if !may_have_rule(slot, family, { key.data }.first16()) {
        None
    } else if slot == 0 {
        rules[0].get(&key).copied()
    } else {
        rules[1].get(&key).copied()
    };
    // A rule of no known kind (a corrupt value) is ignored, and reported.
    let kind = match rule {
        None => None,
        Some(r) => match RuleKind::from_raw(r.kind as u32) {
            Some(k) => Some((k, r)),
            None => {
                report(Fault::RuleValue, u64::from(r.kind), u64::from(r.country));
                None
            }
        },
    };
    let (country, approved, source) = match kind {
        // A deny exception is never approved; its country is still looked up
        // so counters and events say where the destination is.
        Some((RuleKind::Deny, _)) => ({ key.data }.country(slot), false, Source::DenyException),
        Some((RuleKind::Allow, _)) => return exempt(family, Source::AllowException),
        Some((RuleKind::Builtin, _)) => return exempt(family, Source::Builtin),
        // A country index out of range (a corrupt value) would read the
        // other slot's policy entries: treat it as unknown.
        Some((RuleKind::Site, Rule { kind, country, .. })) => {
            let country = if (country as usize) < COUNTRY_SLOTS {
                country
            } else {
                report(Fault::RuleValue, u64::from(kind), u64::from(country));
                UNKNOWN_COUNTRY
            };
            (country, approved(slot, country), Source::Site)
        }
        None => {
            let country = { key.data }.country(slot);
            let source = if country == UNKNOWN_COUNTRY {
                Source::Unknown
            } else {
                Source::Geoip
            };
            (country, approved(slot, country), source)
        }
    };
    if approved {
        return Decision {
            outcome: Outcome::Allowed,
            country,
            family,
            source,
            mode: Mode::Observe,
        };
    }
    let mode = mode(slot);
    let outcome = match mode {
        Mode::Enforce => Outcome::Denied,
        Mode::Observe => Outcome::WouldDeny,
    };
    Decision {
        outcome,
        country,
        family,
        source,
        mode,
    }
}

#[inline(always)]
fn exempt(family: Family, source: Source) -> Decision {
    Decision {
        outcome: Outcome::Exempt,
        country: UNKNOWN_COUNTRY,
        family,
        source,
        mode: Mode::Observe,
    }
}

/// Whether a country (0 = unknown) is approved in a slot's policy table.
#[inline(always)]
fn approved(slot: u32, country: u16) -> bool {
    let index = slot * COUNTRY_SLOTS as u32 + country as u32;
    POLICY.get(index).copied() == Some(APPROVED)
}
