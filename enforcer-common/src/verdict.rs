//! The small enums of the decision: mode, outcome, hook, family, rule kind;
//! and the kinds of internal failure the datapath reports.
//!
//! They cross the boundary as `u32` (see the crate docs); `from_raw` is the
//! only way back to the enum, so a corrupt or stale map value decodes to
//! `None` instead of undefined behaviour.

macro_rules! raw_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// How many values there are (they are numbered `0..COUNT`).
            pub const COUNT: usize = Self::ALL.len();

            /// Decodes a raw value read from a map.
            #[inline(always)]
            pub const fn from_raw(raw: u32) -> Option<Self> {
                match raw {
                    $(x if x == $value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The label used in metrics, events and CLI output.
            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

raw_enum! {
    /// What the datapath does with a destination that is not approved.
    Mode {
        /// Let it through, count it and record it as "would deny".
        Observe = 0 => "observe",
        /// Refuse it: connect()/sendmsg() fail with EPERM, packets are dropped.
        Enforce = 1 => "enforce",
    }
}

raw_enum! {
    /// The outcome of one decision, as counted.
    Outcome {
        /// The destination's jurisdiction is approved.
        Allowed = 0 => "allowed",
        /// Not approved, enforce mode: refused.
        Denied = 1 => "denied",
        /// Not approved, observe mode: let through and recorded.
        WouldDeny = 2 => "would_deny",
        /// Never geolocated: a built-in range (loopback, private, ...) or a
        /// configured `allow` exception.
        Exempt = 3 => "exempt",
    }
}

raw_enum! {
    /// The kernel hook that made a decision.
    Hook {
        Connect4 = 0 => "connect4",
        Connect6 = 1 => "connect6",
        Sendmsg4 = 2 => "sendmsg4",
        Sendmsg6 = 3 => "sendmsg6",
        SkbEgress = 4 => "skb_egress",
        TcxEgress = 5 => "tcx_egress",
    }
}

raw_enum! {
    /// The address family a destination was decided as. An IPv4-mapped IPv6
    /// address (`::ffff:a.b.c.d`) is decided, and counted, as IPv4.
    Family {
        Ipv4 = 0 => "ipv4",
        Ipv6 = 1 => "ipv6",
    }
}

raw_enum! {
    /// Why an exception-table prefix matched. The agent folds every class into
    /// one LPM trie per family, resolving overlaps by this precedence (lowest
    /// number wins), so one lookup gives the first class in the order.
    RuleKind {
        /// Configured `deny` CIDR: never approved.
        Deny = 1 => "deny",
        /// Configured `allow` CIDR: always let through.
        Allow = 2 => "allow",
        /// Configured site network: this CIDR is in the given country.
        Site = 3 => "site",
        /// Built-in never-geolocated range (loopback, link-local, multicast,
        /// unspecified, private).
        Builtin = 4 => "builtin",
    }
}

raw_enum! {
    /// What decided: an exception rule, GeoIP, or nothing (unknown).
    Source {
        Geoip = 0 => "geoip",
        Unknown = 1 => "unknown",
        DenyException = 2 => "deny_exception",
        AllowException = 3 => "allow_exception",
        Site = 4 => "site",
        Builtin = 5 => "builtin",
    }
}

raw_enum! {
    /// An internal failure of the datapath: something a correct agent and
    /// kernel never produce (a map value that does not decode, a helper
    /// that fails where it cannot), as opposed to what traffic or load
    /// cause (a destination not approved, a full events ring). Each is
    /// counted in `DP_ERRORS` (exported as `enforcer_datapath_errors_total`)
    /// and logged through aya-log, at most once a second per CPU and kind.
    Fault {
        /// A global mode word in `CONFIG` is not a mode: the datapath
        /// decides as observe (fails open).
        ModeWord = 0 => "mode_word",
        /// An exception rule's kind is unknown (the rule is ignored) or a
        /// site rule's country is out of range (decided as unknown).
        RuleValue = 1 => "rule_value",
        /// A GeoIP table gives a country index out of range: decided as
        /// unknown.
        GeoValue = 2 => "geo_value",
        /// `bpf_sk_storage_get` could not create a connecting socket's
        /// verdict storage (out of memory): its packets are decided, and
        /// reported, again.
        SockStorage = 3 => "sock_storage",
        /// `bpf_skb_load_bytes` could not read the IP header that a
        /// locally sent packet's `skb->protocol` announces: not decided.
        PacketHeader = 4 => "packet_header",
        /// A socket's cached verdict does not decode: decided again.
        CachedVerdict = 5 => "cached_verdict",
        /// A decision's country or outcome is outside the counters: not
        /// counted.
        CounterIndex = 6 => "counter_index",
    }
}

/// Value of a `POLICY` entry: the country is approved.
pub const APPROVED: u32 = 1;
/// Value of a `POLICY` entry: the country is not approved.
pub const NOT_APPROVED: u32 = 0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_trip_and_reject_garbage() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_raw(*m as u32), Some(*m));
        }
        for (i, h) in Hook::ALL.iter().enumerate() {
            assert_eq!(*h as usize, i, "hooks are numbered densely");
        }
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i, "outcomes are numbered densely");
        }
        assert_eq!(Mode::from_raw(7), None);
        assert_eq!(RuleKind::from_raw(0), None);
        assert_eq!(Outcome::WouldDeny.label(), "would_deny");
        for (i, f) in Fault::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "faults are numbered densely (DP_ERRORS)");
        }
    }
}
