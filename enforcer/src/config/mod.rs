//! The agent's TOML configuration: parsing, defaults and validation.
//!
//! Validation happens here, before anything touches the kernel, so a bad
//! config never changes what is in force. Every error names the file and
//! what is wrong (with the line and column for syntax errors).
//!
//! This file holds what the rest of the agent uses (the validated
//! [`Config`] and its parts, [`Locations`]); `raw.rs` holds the file's
//! own shape (serde) and the checks, one function per section.

pub mod max_flip;
mod raw;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    fmt, fs,
    net::SocketAddr,
    path::{Path, PathBuf},
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

/// What to do with destinations in the anycast class
/// ([`geoip::CountryCode::ANYCAST`]): ranges a source says are served from
/// many countries at once, so no country can be named for them.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Anycast {
    /// Approved, whatever the approved countries.
    Allow,
    /// Not approved. The default: before such a source is added the same
    /// ranges were usually located in one non-approved country (a cloud
    /// provider's registration country), so adding a source never turns a
    /// refusal into an allow unless the config says so.
    #[default]
    Deny,
    /// Decided as the `unknown` policy decides unlocated destinations.
    Unknown,
}

impl Anycast {
    pub fn label(self) -> &'static str {
        match self {
            Anycast::Allow => "allow",
            Anycast::Deny => "deny",
            Anycast::Unknown => "unknown",
        }
    }
}

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
    /// How the anycast class is decided.
    pub anycast: Anycast,
    /// `allow` exceptions: always let through, whatever GeoIP says.
    pub allow: Vec<IpNetwork>,
    /// `deny` exceptions: never approved, whatever GeoIP says.
    pub deny: Vec<IpNetwork>,
    /// Site networks, in config order.
    pub sites: Vec<Site>,
    /// GeoIP sources in priority order: the first that locates an address wins.
    pub sources: Vec<geoip::SourceSpec>,
    /// Reload when a source file is replaced on disk.
    pub watch_sources: bool,
    /// `geoip.max_age`: a database built longer ago is reported too old.
    pub geoip_max_age: Option<std::time::Duration>,
    /// `geoip.max_flip`: the reload guard's bound per family.
    pub max_flip: max_flip::MaxFlip,
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
    /// The Ed25519 signer key (signed-note text form, mode 0600) that signs
    /// every checkpoint; read and checked when a policy is prepared.
    pub signing_key: Option<PathBuf>,
    /// The first line of every signed checkpoint: who speaks (default
    /// `<hostname>/egress-enforcer`).
    pub origin: String,
}

impl Audit {
    /// The checkpoint signer of `signing_key` (none without one): the key
    /// file is read and checked (form, mode 0600) each time, so a reload
    /// sees a replaced key.
    pub fn signer(&self) -> Result<Option<crate::audit::NoteSigner>, crate::audit::KeyFileError> {
        let Some(path) = &self.signing_key else {
            return Ok(None);
        };
        Ok(Some(crate::audit::NoteSigner {
            key: crate::audit::SignerKey::load(path)?,
            origin: self.origin.clone(),
        }))
    }
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

    /// With the embedded default, whether its database is where it reads
    /// it from; when it is not, an error that says exactly how to get it (a
    /// fresh machine has none, and "No such file or directory" alone does
    /// not say what to do). Configs from a file are left to the load, whose
    /// error names the file.
    pub fn check_default_database(&self) -> Result<(), ConfigError> {
        if self.origin != Origin::Embedded {
            return Ok(());
        }
        for path in self.sources.iter().map(|s| &s.path) {
            match fs::metadata(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ConfigError {
                        origin: Origin::Embedded,
                        message: missing_default_database(path),
                    });
                }
                // Anything else (permissions, ...) is the load's error.
                Err(_) => {}
            }
        }
        Ok(())
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
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| err(format_toml_error(&e)))?;
        let base = match &origin {
            Origin::File(p) => p.parent().map(Path::to_owned).unwrap_or_default(),
            Origin::Embedded => PathBuf::from("/"),
        };
        raw.validate(&base, origin.clone()).map_err(err)
    }
}

/// What to do when the embedded default's database is missing.
fn missing_default_database(path: &Path) -> String {
    format!(
        "no config was given (--config), and the built-in default reads the GeoIP database \
         {path}, which does not exist. Either put a database there: on Debian or Ubuntu \
         install `geoipupdate`, put a MaxMind licence key (a free GeoLite2 account) in \
         /etc/GeoIP.conf and run `geoipupdate`, which writes that file; or copy any MaxMind-format \
         country database there (`install -D -m 0644 FILE.mmdb {path}`; from a source \
         checkout, `cargo xtask geoip fetch` downloads one to \
         ~/.cache/egress-enforcer/geoip/GeoLite2-Country.mmdb). Or run with --config FILE \
         whose geoip.sources name your databases (docs/configuration.md)",
        path = path.display()
    )
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

/// The longest checkpoint interval: a day. A checkpoint states what is in
/// force; an auditor should not wait longer for one, and the interval must
/// stay far inside what the timer can represent.
pub const MAX_CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The longest interface name: `IFNAMSIZ` (16) with the NUL.
pub const MAX_INTERFACE_NAME: usize = 15;

/// toml's errors carry the line, column and a snippet; keep them on one
/// readable block under the file name.
fn format_toml_error(e: &toml::de::Error) -> String {
    let msg = e.to_string();
    msg.trim_end().to_owned()
}
