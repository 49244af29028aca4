//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! Validation happens here, before anything touches the kernel, so a bad
//! config never changes what is in force. Every error names the file and
//! what is wrong (with the line and column for syntax errors).

use std::{
    collections::BTreeSet,
    fmt, fs,
    net::SocketAddr,
    path::{Component, Path, PathBuf},
};

use enforcer_common::Mode;
use geoip::CountryCode;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::paths;

/// The configuration used by `enforcer run` when no `--config` is given:
/// observe every process on the host, approve the EEA, let unknown through.
pub const EMBEDDED_DEFAULT: &str = r#"# egress-enforcer built-in default configuration.
mode = "observe"
approved = ["EEA"]
unknown = "allow"

[geoip]
sources = ["/usr/share/GeoIP/GeoLite2-Country.mmdb"]

[scope]
host_wide = true

[metrics]
listen = "127.0.0.1:9477"
"#;

/// Where a config came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Embedded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Embedded => f.write_str("<embedded default config>"),
        }
    }
}

/// A config that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: Origin,
    pub message: String,
}

/// What to do with destinations that no GeoIP source locates.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unknown {
    #[default]
    Allow,
    Deny,
}

impl Unknown {
    pub fn label(self) -> &'static str {
        match self {
            Unknown::Allow => "allow",
            Unknown::Deny => "deny",
        }
    }
}

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
struct RawConfig {
    #[serde(default)]
    mode: ModeSetting,
    approved: Vec<String>,
    #[serde(default)]
    unknown: Unknown,
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
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            enabled: true,
            file: None,
            checkpoint_interval: default_checkpoint(),
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoip {
    sources: Vec<PathBuf>,
    #[serde(default = "default_true")]
    watch: bool,
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The cgroup2 root: every process on the host.
    HostWide,
    /// These cgroups (paths relative to the cgroup2 mount) and their children.
    Cgroups(Vec<PathBuf>),
}

/// A per-cgroup mode: this cgroup (and its children) run in `mode`
/// whatever the global mode is. The deepest matching cgroup wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModeOverride {
    /// Relative to the cgroup2 mount, or absolute under it.
    pub cgroup: PathBuf,
    pub mode: Mode,
}

/// Where refused and would-refuse events go, and how many per second.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Events {
    /// Per CPU per second; 0 turns events off (they are still counted as
    /// decisions in the metrics).
    pub rate_per_cpu: u32,
    /// Bucket size: how many may come at once.
    pub burst: u32,
    /// A JSON-lines file, appended to.
    pub file: Option<PathBuf>,
    /// Also (or, without a file, only) JSON lines on stdout.
    pub stdout: bool,
}

/// A site network: an internal range whose jurisdiction GeoIP cannot know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub net: IpNetwork,
    pub country: CountryCode,
    /// A label for explanations ("paris-dc"); the CIDR when not given.
    pub name: String,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub origin: Origin,
    pub mode: Mode,
    /// The approved-list items as written (codes, set names, `!CODE`).
    pub approved_items: Vec<String>,
    /// The resolved set of approved countries.
    pub approved: BTreeSet<CountryCode>,
    pub unknown: Unknown,
    /// `allow` exceptions: always let through, whatever GeoIP says.
    pub allow: Vec<IpNetwork>,
    /// `deny` exceptions: never approved, whatever GeoIP says.
    pub deny: Vec<IpNetwork>,
    /// Site networks, in config order.
    pub sites: Vec<Site>,
    /// GeoIP sources in priority order: the first that locates an address wins.
    pub sources: Vec<PathBuf>,
    /// Reload when a source file is replaced on disk.
    pub watch_sources: bool,
    pub scope: Scope,
    /// Per-cgroup mode overrides, in config order.
    pub overrides: Vec<ModeOverride>,
    /// Network interfaces (in the agent's network namespace) whose egress
    /// is decided by the tcx program: the traffic the host forwards.
    pub interfaces: Vec<String>,
    pub events: Events,
    pub metrics_listen: SocketAddr,
    pub pin_dir: PathBuf,
    /// The agent's runtime directory (tmpfs): the control socket and the
    /// mode changes made through it, which must last exactly as long as
    /// the pins (until reboot), not longer.
    pub run_dir: PathBuf,
    pub control: Control,
    pub audit: Audit,
}

/// The audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    /// The JSON-lines file (its head beside it as `<file>.head`); None
    /// when the audit log is off.
    pub file: Option<PathBuf>,
    /// How often a checkpoint record states what is in force.
    pub checkpoint_interval: std::time::Duration,
}

/// The control socket: who may use it and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// The unix socket (mode 0660, owned by root and `admin_group`).
    pub socket: PathBuf,
    /// A group whose members may use the socket besides root: a name, or
    /// a numeric gid. Resolved when the agent starts.
    pub admin_group: Option<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = Origin::File(path.to_owned());
        let text = fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, origin)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::parse(EMBEDDED_DEFAULT, Origin::Embedded)
    }

    /// `load(path)` when a path is given, else the embedded default.
    pub fn load_or_default(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => Self::load(p),
            None => Self::embedded_default(),
        }
    }

    /// Parses and validates config text. Relative GeoIP source, events
    /// and audit paths are relative to the config file's directory.
    pub fn parse(text: &str, origin: Origin) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            origin: origin.clone(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| err(format_toml_error(&e)))?;
        let base = match &origin {
            Origin::File(p) => p.parent().map(Path::to_owned).unwrap_or_default(),
            Origin::Embedded => PathBuf::from("/"),
        };
        raw.validate(&base, origin.clone()).map_err(err)
    }
}

/// The sections in the order they are checked, each by its own function;
/// the first error, naming its key, is the one reported.
impl RawConfig {
    fn validate(self, base: &Path, origin: Origin) -> Result<Config, String> {
        let approved = approved(&self.approved)?;
        let allow = parse_cidrs("allow", &self.allow)?;
        let deny = parse_cidrs("deny", &self.deny)?;
        let sites = sites(&self.site)?;
        let sources = self.geoip.sources(base)?;
        let scope = self.scope.scope()?;
        let overrides = self.scope.overrides()?;
        let interfaces = self.scope.interfaces()?;
        let events = self.events.validate(base);
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
            allow,
            deny,
            sites,
            sources,
            watch_sources: self.geoip.watch,
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
    fn sources(&self, base: &Path) -> Result<Vec<PathBuf>, String> {
        if self.sources.is_empty() {
            return Err("geoip.sources: at least one database is needed".into());
        }
        Ok(self.sources.iter().map(|s| under(base, s)).collect())
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

impl RawEvents {
    /// The burst defaults to two seconds' worth; stdout is on when there is
    /// no file.
    fn validate(self, base: &Path) -> Events {
        Events {
            rate_per_cpu: self.rate_per_cpu,
            burst: self
                .burst
                .unwrap_or(self.rate_per_cpu.saturating_mul(2))
                .max(1),
            stdout: self.stdout.unwrap_or(self.file.is_none()),
            file: self.file.map(|f| under(base, &f)),
        }
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
        let pin_dir = absolute(
            "agent.pin_dir",
            self.pin_dir.as_deref(),
            paths::DEFAULT_PIN_DIR,
            " on bpffs",
        )?;
        let run_dir = absolute(
            "agent.run_dir",
            self.run_dir.as_deref(),
            paths::DEFAULT_RUN_DIR,
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
        let socket = absolute("control.socket", Some(&socket), "", "")?;
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

/// The longest checkpoint interval: a day. A checkpoint states what is in
/// force; an auditor should not wait longer for one, and the interval must
/// stay far inside what the timer can represent.
pub const MAX_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(86_400);

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
        Ok(Audit {
            file: self.enabled.then_some(file),
            checkpoint_interval,
        })
    }
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

/// The path of `key` (or `default` when not given), which must be
/// absolute: these are runtime locations, not relative to anything.
fn absolute(key: &str, path: Option<&Path>, default: &str, on: &str) -> Result<PathBuf, String> {
    let path = path.map_or_else(|| PathBuf::from(default), Path::to_owned);
    if !path.is_absolute() {
        return Err(format!("{key} {path:?}: must be an absolute path{on}"));
    }
    Ok(path)
}

/// Where the agent's runtime objects are (pins, control socket), for the
/// verbs that only talk to the agent or read the pins (`status`, `reload`,
/// `mode`, `events`, `check`): these must work while the config has an
/// error elsewhere, since `reload` is how the fixed file is loaded and
/// `status` is how the failure is seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locations {
    pub pin_dir: PathBuf,
    pub socket: PathBuf,
}

impl Locations {
    /// From the config at `path` (the embedded default without one). When
    /// it is not valid, the `agent` and `control` keys are still read from
    /// it when it is TOML at all (defaults where they are absent or not
    /// valid either); the config's error is returned beside them so the
    /// caller can warn.
    pub fn of(path: Option<&Path>) -> (Locations, Option<ConfigError>) {
        let error = match Config::load_or_default(path) {
            Ok(c) => {
                return (
                    Locations {
                        pin_dir: c.pin_dir,
                        socket: c.control.socket,
                    },
                    None,
                );
            }
            Err(e) => e,
        };
        let table: toml::Table = path
            .and_then(|p| fs::read_to_string(p).ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or_default();
        let key = |section: &str, name: &str| {
            table
                .get(section)
                .and_then(|s| s.get(name))
                .and_then(toml::Value::as_str)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let run_dir =
            key("agent", "run_dir").unwrap_or_else(|| PathBuf::from(paths::DEFAULT_RUN_DIR));
        let locations = Locations {
            pin_dir: key("agent", "pin_dir")
                .unwrap_or_else(|| PathBuf::from(paths::DEFAULT_PIN_DIR)),
            socket: key("control", "socket")
                .unwrap_or_else(|| run_dir.join(paths::CONTROL_SOCKET_NAME)),
        };
        (locations, Some(error))
    }
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

/// The longest interface name: `IFNAMSIZ` (16) with the NUL.
pub const MAX_INTERFACE_NAME: usize = 15;

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
    if let Some(c) = name
        .chars()
        .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
    {
        return Err(format!("contains {c:?}, which interface names cannot"));
    }
    Ok(())
}

/// toml's errors carry the line, column and a snippet; keep them on one
/// readable block under the file name.
fn format_toml_error(e: &toml::de::Error) -> String {
    let msg = e.to_string();
    msg.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Origin::File(PathBuf::from("/etc/ee/test.toml")))
    }

    const MINIMAL: &str = r#"
approved = ["DE"]
[geoip]
sources = ["geo.mmdb"]
[scope]
cgroups = ["system.slice/storage.service"]
"#;

    #[test]
    fn embedded_default_is_valid_and_safe() {
        let c = Config::embedded_default().expect("the embedded default parses");
        assert_eq!(c.mode, Mode::Observe);
        assert_eq!(c.unknown, Unknown::Allow);
        assert_eq!(c.scope, Scope::HostWide);
        assert!(c.approved.contains(&"DE".parse().expect("code")));
        assert!(
            c.approved.contains(&"NO".parse().expect("code")),
            "EEA includes Norway"
        );
        assert!(!c.approved.contains(&"US".parse().expect("code")));
    }

    #[test]
    fn minimal_file_gets_defaults_and_relative_sources() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(c.mode, Mode::Observe);
        assert_eq!(c.sources, vec![PathBuf::from("/etc/ee/geo.mmdb")]);
        assert_eq!(c.metrics_listen, "127.0.0.1:9477".parse().expect("addr"));
        assert_eq!(c.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
    }

    #[test]
    fn exceptions_and_sites_parse() {
        let c = parse(&format!(
            "allow = [\"198.51.100.0/28\", \"2001:db8::1\"]\ndeny = [\"198.18.0.0/15\"]\n{MINIMAL}\
             [[site]]\ncidr = \"10.20.0.0/16\"\ncountry = \"fr\"\nname = \"paris-dc\"\n\
             [[site]]\ncidr = \"fd00:1::/32\"\ncountry = \"DE\"\n"
        ))
        .expect("valid");
        assert_eq!(c.allow.len(), 2);
        assert_eq!(c.allow[1].prefix(), 128, "a single address is a /128");
        assert_eq!(
            c.deny,
            vec!["198.18.0.0/15".parse::<IpNetwork>().expect("cidr")]
        );
        assert_eq!(c.sites[0].name, "paris-dc");
        assert_eq!(c.sites[0].country.as_str(), "FR");
        assert_eq!(
            c.sites[1].name, "fd00:1::/32",
            "the CIDR names an unnamed site"
        );
    }

    #[test]
    fn events_and_overrides() {
        let c = parse(MINIMAL).expect("valid");
        assert_eq!(
            c.events,
            Events {
                rate_per_cpu: 100,
                burst: 200,
                file: None,
                stdout: true
            },
            "without a file, events go to stdout"
        );
        let c = parse(&format!(
            "{MINIMAL}[[scope.override]]\ncgroup = \"system.slice/storage.service/worker\"\nmode = \"enforce\"\n\
             [events]\nrate_per_cpu = 5\nfile = \"events.jsonl\"\n"
        ))
        .expect("valid");
        assert_eq!(
            c.overrides,
            vec![ModeOverride {
                cgroup: "system.slice/storage.service/worker".into(),
                mode: Mode::Enforce
            }]
        );
        assert_eq!(c.events.burst, 10);
        assert_eq!(c.events.file, Some(PathBuf::from("/etc/ee/events.jsonl")));
        assert!(!c.events.stdout, "with a file, stdout only when asked");
    }

    #[test]
    fn interfaces_parse_in_scope() {
        let c = parse(MINIMAL).expect("valid");
        assert!(c.interfaces.is_empty(), "no forwarded traffic by default");
        let c = parse(&MINIMAL.replace(
            "[scope]\n",
            "[scope]\ninterfaces = [\"eth1\", \"br0.100\", \"veth-a_b@x\", \"abcdefghijklmno\"]\n",
        ))
        .expect("valid");
        assert_eq!(
            c.interfaces,
            ["eth1", "br0.100", "veth-a_b@x", "abcdefghijklmno"],
            "dots, dashes and 15-byte names are valid, order is kept"
        );
    }

    #[test]
    fn bad_interface_names_are_refused_with_the_key() {
        let with =
            |list: &str| MINIMAL.replace("[scope]\n", &format!("[scope]\ninterfaces = {list}\n"));
        let cases: &[(&str, &str)] = &[
            ("[\"\"]", "scope.interfaces[0] \"\": empty name"),
            (
                "[\"eth0\", \"abcdefghijklmnop\"]",
                "scope.interfaces[1] \"abcdefghijklmnop\": 16 bytes long",
            ),
            ("[\"a/b\"]", "scope.interfaces[0] \"a/b\": contains '/'"),
            ("[\"eth 0\"]", "scope.interfaces[0] \"eth 0\": contains ' '"),
            ("[\"eth0\\t\"]", "contains '\\t'"),
            ("[\"eth0:1\"]", "contains ':'"),
            ("[\"..\"]", "not an interface name"),
            (
                "[\"eth0\", \"eth0\"]",
                "scope.interfaces[1] \"eth0\": given twice",
            ),
            ("\"eth0\"", "interfaces"),
        ];
        for (list, needle) in cases {
            let e = parse(&with(list)).expect_err(list).to_string();
            assert!(e.starts_with("/etc/ee/test.toml: "), "{e}");
            assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn locations_are_read_from_a_config_with_an_error_elsewhere() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("broken.toml");
        let text = format!(
            "{MINIMAL}[agent]\npin_dir = \"/sys/fs/bpf/x\"\nrun_dir = \"/run/x\"\n[audit]\ncheckpoint_interval = \"never\"\n"
        );
        fs::write(&path, text).expect("write");
        let (at, error) = Locations::of(Some(&path));
        assert_eq!(at.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(
            at.socket,
            PathBuf::from("/run/x").join(paths::CONTROL_SOCKET_NAME)
        );
        assert!(error.is_some_and(|e| e.message.contains("checkpoint_interval")));
        // Not TOML at all: the defaults, and the error.
        fs::write(&path, "approved = [\n").expect("write");
        let (at, error) = Locations::of(Some(&path));
        assert_eq!(at.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
        assert!(error.is_some());
        // A valid config: its own values and no error.
        let (at, error) = Locations::of(None);
        assert!(error.is_none());
        assert_eq!(at.pin_dir, PathBuf::from(paths::DEFAULT_PIN_DIR));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("mode = \"enforc\"\n", "enforc"),
            (&MINIMAL.replace("[\"DE\"]", "[\"XX1\"]"), "XX1"),
            (
                &MINIMAL.replace("[\"DE\"]", "[\"DE\", \"UK\"]"),
                "\"UK\" is not an assigned ISO 3166-1",
            ),
            (
                &format!("{MINIMAL}[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"QQ\"\n"),
                "site[0].country \"QQ\": not an assigned",
            ),
            (
                &MINIMAL.replace("[\"DE\"]", "[\"DE\", \"!DE\"]"),
                "resolves to no country",
            ),
            (
                &format!("{MINIMAL}\n[metrics]\nlisten = \"nonsense\"\n"),
                "metrics.listen",
            ),
            (&MINIMAL.replace("approved", "aproved"), "aproved"),
            (
                &MINIMAL.replace("system.slice/storage.service", "../escape"),
                "..",
            ),
            (
                &MINIMAL.replace("cgroups = [\"system.slice/storage.service\"]", ""),
                "no cgroups",
            ),
            ("approved = [\n", "line"),
            (
                &format!("{MINIMAL}[audit]\ncheckpoint_interval = \"300000000000y\"\n"),
                "audit.checkpoint_interval \"300000000000y\"",
            ),
            (
                &format!("{MINIMAL}[audit]\ncheckpoint_interval = \"25h\"\n"),
                "audit.checkpoint_interval \"25h\": at most 1 day",
            ),
            (
                &format!("{MINIMAL}[agent]\npin_dir = \"pins\"\n"),
                "agent.pin_dir \"pins\": must be an absolute path on bpffs",
            ),
            (
                &format!("{MINIMAL}[[scope.override]]\ncgroup = \"x\"\nmode = \"audit\"\n"),
                "audit",
            ),
            (
                &format!(
                    "{MINIMAL}[[scope.override]]\ncgroup = \"x\"\nmode = \"enforce\"\n[[scope.override]]\ncgroup = \"x\"\nmode = \"observe\"\n"
                ),
                "scope.override[1].cgroup \"x\": given twice",
            ),
            (
                &format!("allow = [\"10.0.0.1/8\"]\n{MINIMAL}"),
                "allow[0] \"10.0.0.1/8\": host bits are set; the network is 10.0.0.0/8",
            ),
            (
                &format!("deny = [\"198.51.100.0/24\", \"nope\"]\n{MINIMAL}"),
                "deny[1] \"nope\"",
            ),
            (
                &format!("{MINIMAL}[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"FRA\"\n"),
                "site[0].country",
            ),
            (
                &format!(
                    "{MINIMAL}[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"FR\"\n[[site]]\ncidr = \"10.1.0.0/16\"\ncountry = \"DE\"\n"
                ),
                "site[1] 10.1.0.0/16 is DE",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.starts_with("/etc/ee/test.toml: "), "{e}");
            assert!(e.contains(needle), "error {e:?} should mention {needle:?}");
        }
    }
}
