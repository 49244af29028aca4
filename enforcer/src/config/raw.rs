//! The config file's own shape (what serde reads, with its defaults) and
//! its validation into a [`Config`], one function per section, checked in
//! file order so the first error reported is the first in the file.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
};

use enforcer_common::Mode;
use geoip::CountryCode;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use super::{
    Audit, Config, Control, Events, MAX_CHECKPOINT_INTERVAL, MAX_INTERFACE_NAME, ModeOverride,
    Origin, Scope, Site, Unknown,
};
use crate::paths;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum ModeSetting {
    #[default]
    Observe,
    Enforce,
}

impl From<ModeSetting> for Mode {
    fn from(m: ModeSetting) -> Mode {
        match m {
            ModeSetting::Observe => Mode::Observe,
            ModeSetting::Enforce => Mode::Enforce,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    mode: ModeSetting,
    approved: Vec<String>,
    #[serde(default)]
    unknown: Unknown,
    #[serde(default)]
    anycast: super::Anycast,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    site: Vec<RawSite>,
    geoip: RawGeoip,
    scope: RawScope,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    agent: RawAgent,
    #[serde(default)]
    events: RawEvents,
    #[serde(default)]
    control: RawControl,
    #[serde(default)]
    audit: RawAudit,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "default_true")]
    enabled: bool,
    file: Option<PathBuf>,
    #[serde(default = "default_checkpoint")]
    checkpoint_interval: String,
    signing_key: Option<PathBuf>,
    origin: Option<String>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
            checkpoint_interval: default_checkpoint(),
            signing_key: None,
            origin: None,
        }
    }
}

fn default_checkpoint() -> String {
    "10m".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<PathBuf>,
    admin_group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    cidr: String,
    country: String,
    #[serde(default)]
    name: Option<String>,
}

/// One `geoip.sources` entry: a path (kind detected), or a table naming
/// the kind and, for MaxMind-schema databases, the field that locates.
#[derive(Debug)]
enum RawSource {
    Path(PathBuf),
    Table(RawSourceTable),
}

// By hand rather than `#[serde(untagged)]`, whose only error is "did not
// match any variant": a table with a misspelt key must say which key.
impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSource;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path, or a table { path = \"...\", kind = \"...\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSource, E> {
                Ok(RawSource::Path(PathBuf::from(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawSource, A::Error> {
                RawSourceTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawSource::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSourceTable {
    path: PathBuf,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    country_field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoip {
    sources: Vec<RawSource>,
    #[serde(default = "default_true")]
    watch: bool,
    /// How old (from its build time) a database may be before status,
    /// check and metrics call it too old, e.g. "35d"; unset: no limit.
    #[serde(default)]
    max_age: Option<String>,
    /// The reload guard's bounds (see `super::max_flip`).
    #[serde(default)]
    max_flip: RawMaxFlip,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaxFlip {
    ipv4: Option<String>,
    ipv6: Option<String>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScope {
    #[serde(default)]
    cgroups: Vec<PathBuf>,
    #[serde(default)]
    host_wide: bool,
    #[serde(default, rename = "override")]
    overrides: Vec<RawOverride>,
    #[serde(default)]
    interfaces: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    cgroup: PathBuf,
    mode: ModeSetting,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    #[serde(default = "default_event_rate")]
    rate_per_cpu: u32,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    stdout: Option<bool>,
}

impl Default for RawEvents {
    fn default() -> Self {
        Self {
            rate_per_cpu: default_event_rate(),
            burst: None,
            file: None,
            stdout: None,
        }
    }
}

fn default_event_rate() -> u32 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_listen")]
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> String {
    paths::DEFAULT_METRICS_LISTEN.to_owned()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    pin_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

/// Which cgroups the datapath is attached to.
/// The sections in the order they are checked, each by its own function;
/// the first error, naming its key, is the one reported.
impl RawConfig {
    pub(super) fn validate(self, base: &Path, origin: Origin) -> Result<Config, String> {
        let approved = approved(&self.approved)?;
        let allow = parse_cidrs("allow", &self.allow)?;
        let deny = parse_cidrs("deny", &self.deny)?;
        let sites = sites(&self.site)?;
        let sources = self.geoip.sources(base)?;
        let geoip_max_age = self.geoip.max_age()?;
        let max_flip = self.geoip.max_flip()?;
        let scope = self.scope.scope()?;
        let overrides = self.scope.overrides()?;
        let interfaces = self.scope.interfaces()?;
        let events = self.events.validate(base)?;
        let metrics_listen = self.metrics.listen()?;
        let (pin_dir, run_dir) = self.agent.dirs()?;
        let control = self.control.validate(&run_dir)?;
        let audit = self.audit.validate(base)?;
        Ok(Config {
            origin,
            mode: self.mode.into(),
            approved_items: self.approved,
            approved,
            unknown: self.unknown,
            anycast: self.anycast,
            allow,
            deny,
            sites,
            sources,
            watch_sources: self.geoip.watch,
            geoip_max_age,
            max_flip,
            scope,
            overrides,
            interfaces,
            events,
            metrics_listen,
            pin_dir,
            run_dir,
            control,
            audit,
        })
    }
}

/// `approved`: codes and set names resolved to countries; an empty result
/// would refuse everything, which is never what was meant.
fn approved(items: &[String]) -> Result<BTreeSet<CountryCode>, String> {
    let approved = geoip::sets::resolve(items).map_err(|e| format!("approved: {e}"))?;
    if approved.is_empty() {
        return Err(
            "approved: the list resolves to no country; every destination would be refused".into(),
        );
    }
    Ok(approved)
}

/// `[[site]]`: each CIDR with an assigned country; the same range may not
/// be given two countries.
fn sites(raw: &[RawSite]) -> Result<Vec<Site>, String> {
    let mut sites: Vec<Site> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let net = parse_cidr(&s.cidr).map_err(|m| format!("site[{i}].cidr {:?}: {m}", s.cidr))?;
        let country: CountryCode = s
            .country
            .parse()
            .map_err(|e| format!("site[{i}].country {:?}: {e}", s.country))?;
        if !country.is_assigned() {
            return Err(format!(
                "site[{i}].country {:?}: not an assigned ISO 3166-1 alpha-2 country code",
                s.country
            ));
        }
        if let Some(other) = sites.iter().find(|o| o.net == net && o.country != country) {
            return Err(format!(
                "site[{i}] {net} is {country}, but site {:?} says the same range is {}",
                other.name, other.country
            ));
        }
        sites.push(Site {
            net,
            country,
            name: s.name.clone().unwrap_or_else(|| net.to_string()),
        });
    }
    Ok(sites)
}

impl RawGeoip {
    /// The sources, relative ones under the config's directory.
    /// `geoip.max_age`: at least an hour (a database is never rebuilt
    /// more often), at most ten years.
    fn max_age(&self) -> Result<Option<std::time::Duration>, String> {
        let Some(text) = &self.max_age else {
            return Ok(None);
        };
        let key = "geoip.max_age";
        let age = humantime::parse_duration(text)
            .map_err(|e| format!("{key} {text:?}: {e} (e.g. \"35d\", \"6w\")"))?;
        if age < std::time::Duration::from_secs(3600) {
            return Err(format!("{key} {text:?}: at least 1h"));
        }
        if age > std::time::Duration::from_secs(10 * 365 * 86400) {
            return Err(format!("{key} {text:?}: at most 10 years"));
        }
        Ok(Some(age))
    }

    /// `geoip.max_flip.ipv4` and `.ipv6`; each unset one is its default
    /// ([`super::max_flip::DEFAULT_IPV4`], `DEFAULT_IPV6`).
    fn max_flip(&self) -> Result<super::max_flip::MaxFlip, String> {
        use super::max_flip::{DEFAULT_IPV4, DEFAULT_IPV6, FlipBound, MaxFlip};
        let one = |family: &str, text: &Option<String>, default, bits| {
            FlipBound::parse(
                &format!("geoip.max_flip.{family}"),
                text.as_deref().unwrap_or(default),
                bits,
            )
        };
        Ok(MaxFlip {
            ipv4: one("ipv4", &self.max_flip.ipv4, DEFAULT_IPV4, 32)?,
            ipv6: one("ipv6", &self.max_flip.ipv6, DEFAULT_IPV6, 128)?,
        })
    }

    fn sources(&self, base: &Path) -> Result<Vec<geoip::SourceSpec>, String> {
        if self.sources.is_empty() {
            return Err("geoip.sources: at least one database is needed".into());
        }
        let mut specs: Vec<geoip::SourceSpec> = Vec::with_capacity(self.sources.len());
        for (i, source) in self.sources.iter().enumerate() {
            let spec = match source {
                RawSource::Path(p) => geoip::SourceSpec::path(under(base, p)),
                RawSource::Table(t) => {
                    let key = format!("geoip.sources[{i}]");
                    let kind = match &t.kind {
                        None => geoip::Kind::Auto,
                        Some(text) => geoip::Kind::from_label(text).ok_or_else(|| {
                            let known: Vec<&str> =
                                geoip::Kind::ALL.iter().map(|(_, l)| *l).collect();
                            format!(
                                "{key}.kind {text:?}: unknown kind (expected one of {})",
                                known.join(", ")
                            )
                        })?,
                    };
                    let country_field = match &t.country_field {
                        None => geoip::CountryField::Country,
                        Some(text) => geoip::CountryField::from_label(text).ok_or_else(|| {
                            format!(
                                "{key}.country_field {text:?}: expected \"country\" or \
                                 \"registered_country\""
                            )
                        })?,
                    };
                    if t.country_field.is_some() && !kind.may_be_mmdb() {
                        return Err(format!(
                            "{key}.country_field: only MaxMind-schema databases have one \
                             (kind is {:?})",
                            kind.label()
                        ));
                    }
                    geoip::SourceSpec {
                        path: under(base, &t.path),
                        options: geoip::Options {
                            kind,
                            country_field,
                        },
                    }
                }
            };
            if let Some(j) = specs.iter().position(|s| s.path == spec.path) {
                return Err(format!(
                    "geoip.sources[{i}]: {} is already geoip.sources[{j}]",
                    spec.path.display()
                ));
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

impl RawScope {
    /// Host-wide or a list of cgroups, never both, never neither.
    fn scope(&self) -> Result<Scope, String> {
        match (self.host_wide, self.cgroups.is_empty()) {
            (true, true) => Ok(Scope::HostWide),
            (true, false) => {
                Err("scope: set either host_wide = true or cgroups = [...], not both".into())
            }
            (false, true) => Err(
                "scope: no cgroups listed; set cgroups = [\"system.slice/my.service\"] or host_wide = true".into(),
            ),
            (false, false) => self
                .cgroups
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    normalize_cgroup(c).map_err(|m| format!("scope.cgroups[{i}] {c:?}: {m}"))
                })
                .collect::<Result<_, _>>()
                .map(Scope::Cgroups),
        }
    }

    /// `[[scope.override]]`: one mode per cgroup.
    fn overrides(&self) -> Result<Vec<ModeOverride>, String> {
        let mut overrides = Vec::with_capacity(self.overrides.len());
        for (i, o) in self.overrides.iter().enumerate() {
            let cgroup = normalize_cgroup(&o.cgroup)
                .map_err(|m| format!("scope.override[{i}].cgroup {:?}: {m}", o.cgroup))?;
            if overrides.iter().any(|p: &ModeOverride| p.cgroup == cgroup) {
                return Err(format!(
                    "scope.override[{i}].cgroup {:?}: given twice",
                    o.cgroup
                ));
            }
            overrides.push(ModeOverride {
                cgroup,
                mode: o.mode.into(),
            });
        }
        Ok(overrides)
    }

    /// `scope.interfaces`: names the kernel would accept, each once.
    fn interfaces(&self) -> Result<Vec<String>, String> {
        let mut interfaces: Vec<String> = Vec::with_capacity(self.interfaces.len());
        for (i, name) in self.interfaces.iter().enumerate() {
            check_interface_name(name)
                .map_err(|m| format!("scope.interfaces[{i}] {name:?}: {m}"))?;
            if interfaces.contains(name) {
                return Err(format!("scope.interfaces[{i}] {name:?}: given twice"));
            }
            interfaces.push(name.clone());
        }
        Ok(interfaces)
    }
}

/// The most events per CPU per second. The datapath's token bucket
/// multiplies the rate by up to ten seconds of nanoseconds, which a rate
/// beyond about 1.8e9 would overflow; and the ring buffer holds about ten
/// thousand events, so more could only be dropped as ring_full.
pub const MAX_EVENT_RATE: u32 = 1_000_000;
/// The largest burst: two seconds at the highest rate (the default burst
/// is two seconds' worth).
pub const MAX_EVENT_BURST: u32 = 2 * MAX_EVENT_RATE;

impl RawEvents {
    /// The burst defaults to two seconds' worth; stdout is on when there is
    /// no file. Rate and burst are bounded.
    fn validate(self, base: &Path) -> Result<Events, String> {
        if self.rate_per_cpu > MAX_EVENT_RATE {
            return Err(format!(
                "events.rate_per_cpu {}: at most {MAX_EVENT_RATE} per CPU per second",
                self.rate_per_cpu
            ));
        }
        let burst = self
            .burst
            .unwrap_or(self.rate_per_cpu.saturating_mul(2))
            .max(1);
        if burst > MAX_EVENT_BURST {
            return Err(format!("events.burst {burst}: at most {MAX_EVENT_BURST}"));
        }
        Ok(Events {
            rate_per_cpu: self.rate_per_cpu,
            burst,
            stdout: self.stdout.unwrap_or(self.file.is_none()),
            file: self.file.map(|f| under(base, &f)),
        })
    }
}

impl RawMetrics {
    fn listen(&self) -> Result<SocketAddr, String> {
        self.listen.parse().map_err(|e| {
            format!(
                "metrics.listen {:?}: not an address:port ({e})",
                self.listen
            )
        })
    }
}

impl RawAgent {
    /// The pin directory (on bpffs) and the runtime directory.
    fn dirs(&self) -> Result<(PathBuf, PathBuf), String> {
        let given_or = |p: &Option<PathBuf>, default: &str| {
            p.clone().unwrap_or_else(|| PathBuf::from(default))
        };
        let pin_dir = absolute(
            "agent.pin_dir",
            given_or(&self.pin_dir, paths::DEFAULT_PIN_DIR),
            " on bpffs",
        )?;
        let run_dir = absolute(
            "agent.run_dir",
            given_or(&self.run_dir, paths::DEFAULT_RUN_DIR),
            "",
        )?;
        Ok((pin_dir, run_dir))
    }
}

impl RawControl {
    /// The socket (under the runtime directory unless given) and the admin
    /// group.
    fn validate(self, run_dir: &Path) -> Result<Control, String> {
        let socket = self
            .socket
            .unwrap_or_else(|| run_dir.join(paths::CONTROL_SOCKET_NAME));
        let socket = absolute("control.socket", socket, "")?;
        // sockaddr_un.sun_path is 108 bytes with the NUL.
        if socket.as_os_str().len() > 107 {
            return Err(format!(
                "control.socket {socket:?}: longer than the 107 bytes a unix socket path may have"
            ));
        }
        if let Some(g) = &self.admin_group
            && (g.is_empty() || g.contains(['\0', ':', '\n']))
        {
            return Err(format!(
                "control.admin_group {g:?}: not a group name or gid"
            ));
        }
        Ok(Control {
            socket,
            admin_group: self.admin_group,
        })
    }
}

impl RawAudit {
    /// The log file (relative to the config's directory) when the log is
    /// on, and the checkpoint interval, from one second to a day.
    fn validate(self, base: &Path) -> Result<Audit, String> {
        let key = "audit.checkpoint_interval";
        let text = &self.checkpoint_interval;
        let checkpoint_interval = humantime::parse_duration(text)
            .map_err(|e| format!("{key} {text:?}: {e} (e.g. \"10m\", \"1h\")"))?;
        if checkpoint_interval < std::time::Duration::from_secs(1) {
            return Err(format!("{key} {text:?}: at least 1s"));
        }
        if checkpoint_interval > MAX_CHECKPOINT_INTERVAL {
            return Err(format!("{key} {text:?}: at most 1 day"));
        }
        let file = self
            .file
            .map(|f| under(base, &f))
            .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_AUDIT_LOG));
        let origin = match self.origin {
            Some(o) => o,
            None => default_origin(),
        };
        // The note's first line: one line of text, and a key name's rules
        // so it can double as one (no spaces, no '+').
        if origin.is_empty()
            || origin
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '+')
        {
            return Err(format!(
                "audit.origin {origin:?}: must be non-empty, without spaces, control characters or '+'"
            ));
        }
        Ok(Audit {
            file: self.enabled.then_some(file),
            checkpoint_interval,
            signing_key: self.signing_key.map(|k| under(base, &k)),
            origin,
        })
    }
}

/// `<hostname>/egress-enforcer`: names the host in its signed checkpoints
/// (`localhost` when the host name cannot be read).
fn default_origin() -> String {
    // The kernel's host name of the agent's UTS namespace, as hostname(1).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(|c: char| c.is_whitespace() || c == '+'))
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/egress-enforcer")
}

/// `path` as given when absolute, else under `base` (the config file's
/// directory).
fn under(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

/// `path`, the value of `key`, which must be absolute: these are runtime
/// locations, not relative to anything (`on` says where, for the error).
fn absolute(key: &str, path: PathBuf, on: &str) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{key} {path:?}: must be an absolute path{on}"));
    }
    Ok(path)
}

/// Parses a CIDR (or a single address, as /32 or /128). Host bits must be
/// zero: `10.0.0.1/8` is almost always a typo, and silently widening or
/// narrowing an exception is worse than an error.
fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    let net: IpNetwork = text
        .trim()
        .parse()
        .map_err(|e| format!("not a CIDR ({e})"))?;
    if net.network() != net.ip() {
        return Err(format!(
            "host bits are set; the network is {}/{}",
            net.network(),
            net.prefix()
        ));
    }
    Ok(net)
}

/// A list of CIDRs (`allow`, `deny`), each checked like [`parse_cidr`].
fn parse_cidrs(field: &str, items: &[String]) -> Result<Vec<IpNetwork>, String> {
    items
        .iter()
        .enumerate()
        .map(|(i, t)| parse_cidr(t).map_err(|m| format!("{field}[{i}] {t:?}: {m}")))
        .collect()
}

/// A scope cgroup as a path relative to the cgroup2 mount. Absolute paths
/// are accepted when they are under the mount (checked at attach time, when
/// the mount is known); `..` is refused so a scope can never climb out.
fn normalize_cgroup(p: &Path) -> Result<PathBuf, String> {
    if p.as_os_str().is_empty() {
        return Err("empty path".into());
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("must not contain \"..\"".into());
    }
    Ok(p.to_owned())
}

/// Checks an interface name the way the kernel does (`dev_valid_name` in
/// https://github.com/torvalds/linux/blob/v6.18/net/core/dev.c), so a name
/// no interface can have is an error in the config, not a lookup failure
/// at attach time.
fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_INTERFACE_NAME {
        return Err(format!(
            "{} bytes long; interface names have at most {MAX_INTERFACE_NAME}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("not an interface name".into());
    }
    // The metrics' `scope` label names interfaces as they are; these two
    // values mean something else there (docs/metrics.md).
    if name == "overflow" || name == "carried" {
        return Err("reserved: the metrics' scope label uses it for counts of no entry".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("contains {c:?}, which interface names cannot"));
    }
    Ok(())
}
