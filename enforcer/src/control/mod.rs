//! The control socket: how ops talk to a running agent.
//!
//! A unix stream socket (docs/architecture.md, "Local control only"), mode 0660,
//! owned by root and the configured admin group. The file mode keeps other
//! users from connecting; the agent checks the peer's credentials on every
//! request anyway ([`peer`]), so a socket whose mode was loosened by hand,
//! or a connected fd handed to another process, still gets nobody in who
//! is not root or in the admin group.
//!
//! The protocol is one JSON request line per connection, answered by one
//! JSON [`Reply`] line; `events` with `follow` keeps the connection open
//! and streams one event JSON line after the reply until the client goes
//! away. JSON lines keep it scriptable (`socat`, `nc -U`) and versionable:
//! unknown verbs and fields are refused with an error that names them.

pub mod client;
pub mod peer;
pub mod server;

use std::{net::IpAddr, path::PathBuf};

use enforcer_common::Mode;
use serde::{Deserialize, Serialize};

/// The longest request line the agent reads: a `check` of a few thousand
/// addresses fits, a runaway client does not hold the agent's memory.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// A mode as written on the wire and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModeName {
    Enforce,
    Observe,
}

impl From<ModeName> for Mode {
    fn from(m: ModeName) -> Mode {
        match m {
            ModeName::Enforce => Mode::Enforce,
            ModeName::Observe => Mode::Observe,
        }
    }
}

impl From<Mode> for ModeName {
    fn from(m: Mode) -> ModeName {
        match m {
            Mode::Enforce => ModeName::Enforce,
            Mode::Observe => ModeName::Observe,
        }
    }
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// What the agent runs and what the kernel holds. (Verbs without
    /// arguments are empty structs, not unit variants, so that serde
    /// refuses unknown fields on them too.)
    Status {},
    /// Switch the global mode, or one cgroup's (an override), now. The
    /// reason goes into the audit log with the caller's uid.
    Mode {
        mode: ModeName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<PathBuf>,
        reason: String,
    },
    /// Reload the config and databases, like SIGHUP, and say how it went.
    /// `accept_change`: apply new GeoIP data even when it flips more
    /// address space than `geoip.max_flip` allows (the reload guard).
    Reload {
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        accept_change: bool,
    },
    /// Recent events; with `follow`, then every new one until the client
    /// disconnects.
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Explain the verdict for addresses from the live kernel maps.
    Check {
        addresses: Vec<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cgroup: Option<PathBuf>,
    },
}

/// Why a request line was not a request. The message goes back to the
/// client as the reply's error.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request longer than {MAX_REQUEST_BYTES} bytes")]
    TooLong,
    #[error("bad request: {0}")]
    Json(#[from] serde_json::Error),
}

impl Request {
    /// Parses one request line as read from the socket (the trailing
    /// newline, if any, included). A pure function over the bytes, so that
    /// the fuzz target `control` exercises exactly what the server runs:
    /// anything that is not one valid request is an error, never a panic.
    pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
        if line.len() > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLong);
        }
        Ok(serde_json::from_slice(line)?)
    }

    /// The verb, as a bounded metric label.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Status {} => "status",
            Request::Mode { .. } => "mode",
            Request::Reload { .. } => "reload",
            Request::Events { .. } => "events",
            Request::Check { .. } => "check",
        }
    }
}

/// Every verb, for metrics (a request that does not parse is `invalid`).
pub const VERBS: &[&str] = &["status", "mode", "reload", "events", "check", "invalid"];

/// The answer to one request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub result: serde_json::Value,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply {
            ok: true,
            error: None,
            result,
        }
    }

    pub fn error(message: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(message.into()),
            result: serde_json::Value::Null,
        }
    }
}

/// An error on the client side of the socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot connect to the control socket {path}: {source} (is the agent running? is this the config it runs with?)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "control socket {path}: permission denied; run as root or as a member of the agent's control.admin_group"
    )]
    Permission { path: PathBuf },
    #[error("control socket {path}: {detail}")]
    Protocol { path: PathBuf, detail: String },
    #[error("the agent refused the request: {0}")]
    Refused(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::Mode {
            mode: ModeName::Enforce,
            cgroup: Some("system.slice/minio.service".into()),
            reason: "change 42".into(),
        };
        let line = serde_json::to_string(&r).expect("serialises");
        assert_eq!(
            line,
            r#"{"verb":"mode","mode":"enforce","cgroup":"system.slice/minio.service","reason":"change 42"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).expect("parses"), r);
        let bad = serde_json::from_str::<Request>(r#"{"verb":"status","x":1}"#)
            .expect_err("unknown field")
            .to_string();
        assert!(bad.contains("unknown field"), "{bad}");
        assert_eq!(
            serde_json::to_string(&Request::Status {}).expect("serialises"),
            r#"{"verb":"status"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Reload {
                accept_change: false
            })
            .expect("serialises"),
            r#"{"verb":"reload"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"verb":"reload","accept_change":true}"#)
                .expect("parses"),
            Request::Reload {
                accept_change: true
            }
        );
        let bad = serde_json::from_str::<Request>(r#"{"verb":"reload","now":true}"#)
            .expect_err("unknown field on an argument-less verb")
            .to_string();
        assert!(bad.contains("unknown field"), "{bad}");
        let bad = serde_json::from_str::<Request>(r#"{"verb":"format_disk"}"#)
            .expect_err("unknown verb")
            .to_string();
        assert!(bad.contains("format_disk"), "{bad}");
        let bad = serde_json::from_str::<Request>(r#"{"verb":"mode","mode":"off","reason":"x"}"#)
            .expect_err("unknown mode")
            .to_string();
        assert!(bad.contains("off"), "{bad}");
    }

    #[test]
    fn parse_takes_a_line_as_read_and_bounds_its_length() {
        assert_eq!(
            Request::parse(b"{\"verb\":\"status\"}\n").expect("parses"),
            Request::Status {}
        );
        let e = Request::parse(b"{\"verb\":").expect_err("truncated");
        assert!(e.to_string().starts_with("bad request: "), "{e}");
        let e = Request::parse(b"\xff\xfe").expect_err("not JSON");
        assert!(e.to_string().starts_with("bad request: "), "{e}");
        let mut long = br#"{"verb":"check","addresses":["#.to_vec();
        long.resize(MAX_REQUEST_BYTES + 1, b' ');
        let e = Request::parse(&long).expect_err("too long");
        assert_eq!(
            e.to_string(),
            format!("request longer than {MAX_REQUEST_BYTES} bytes")
        );
    }
}
