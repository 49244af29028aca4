//! Mode changes made through the control socket (`enforcer mode`), and how
//! they combine with the config.
//!
//! An operator who switches a host to enforce at 3 am must not find it back
//! in observe after the daily database refresh (a reload) or an agent
//! restart. So a runtime change is kept in `<run_dir>/runtime-mode.json`
//! and stays in force across reloads and restarts, until the operator
//! changes it again or someone edits the config value it overrode: each
//! change records what the config said at the time, and a config that now
//! says something else wins (the edit is the newer decision). The file is
//! on tmpfs (`/run`), like the bpffs pins: after a reboot both are gone and
//! the config alone decides.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use enforcer_common::Mode;
use serde::{Deserialize, Serialize};

use crate::{
    config::{Config, ModeOverride},
    control::ModeName,
};

/// One runtime change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub mode: ModeName,
    /// What the config said when the change was made: the global mode, or
    /// this cgroup's override (None: it had none).
    pub config_said: Option<ModeName>,
    pub uid: u32,
    pub reason: String,
    /// RFC 3339.
    pub time: String,
}

/// Every runtime change in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeModes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Change>,
    /// By absolute cgroup path.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cgroups: BTreeMap<PathBuf, Change>,
}

/// An error reading or writing the state file; names it.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct StateError {
    pub path: PathBuf,
    pub detail: String,
}

/// What the config and the runtime changes make together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effective {
    pub mode: Mode,
    /// The config's overrides with the runtime ones layered over them
    /// (absolute paths).
    pub overrides: Vec<ModeOverride>,
    /// Runtime changes dropped because the config changed under them.
    pub dropped: Vec<String>,
}

impl RuntimeModes {
    /// Reads the state file; a missing file is no change. A file that does
    /// not parse is an error: guessing could silently undo an operator's
    /// switch to enforce.
    pub fn load(path: &Path) -> Result<RuntimeModes, StateError> {
        let err = |detail: String| StateError {
            path: path.to_owned(),
            detail,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                err(format!(
                    "does not parse ({e}); remove it to go back to the config's modes"
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RuntimeModes::default()),
            Err(e) => Err(err(format!("cannot read: {e}"))),
        }
    }

    /// Writes the state file atomically (a temporary file renamed over it),
    /// or removes it when nothing is left.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |detail: String| StateError {
            path: path.to_owned(),
            detail,
        };
        if self == &RuntimeModes::default() {
            return match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(err(format!("cannot remove: {e}"))),
            };
        }
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating its directory: {e}")))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| err(format!("temporary file: {e}")))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.to_string()))?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| err(format!("writing: {e}")))?;
        tmp.persist(path)
            .map_err(|e| err(format!("renaming into place: {}", e.error)))?;
        Ok(())
    }

    /// Combines with `config`, dropping (and reporting) the changes whose
    /// config value was edited since. `mount` is the cgroup2 mount, to
    /// compare config paths with the absolute ones kept here.
    pub fn apply(&mut self, config: &Config, mount: &Path) -> Effective {
        let mut dropped = Vec::new();
        let config_mode: ModeName = config.mode.into();
        let mode = match &self.global {
            Some(c) if c.config_said == Some(config_mode) => c.mode.into(),
            Some(c) => {
                dropped.push(format!(
                    "global mode {:?} (set by uid {}: {:?}): the config's mode is now {:?}",
                    c.mode, c.uid, c.reason, config_mode
                ));
                self.global = None;
                config.mode
            }
            None => config.mode,
        };
        let mut overrides: Vec<ModeOverride> = config
            .overrides
            .iter()
            .map(|o| ModeOverride {
                cgroup: crate::scope::absolute(mount, &o.cgroup),
                mode: o.mode,
            })
            .collect();
        self.cgroups.retain(|path, c| {
            let said = overrides
                .iter()
                .find(|o| &o.cgroup == path)
                .map(|o| ModeName::from(o.mode));
            if said != c.config_said {
                dropped.push(format!(
                    "mode {:?} of cgroup {} (set by uid {}: {:?}): the config's override for it changed",
                    c.mode,
                    path.display(),
                    c.uid,
                    c.reason
                ));
                return false;
            }
            true
        });
        for (path, c) in &self.cgroups {
            match overrides.iter_mut().find(|o| &o.cgroup == path) {
                Some(o) => o.mode = c.mode.into(),
                None => overrides.push(ModeOverride {
                    cgroup: path.clone(),
                    mode: c.mode.into(),
                }),
            }
        }
        Effective {
            mode,
            overrides,
            dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn config(mode: &str, overrides: &str) -> Config {
        Config::parse(
            &format!(
                "mode = \"{mode}\"\napproved = [\"EEA\"]\n[geoip]\nsources = [\"x.csv\"]\n\
                 [scope]\ncgroups = [\"svc\"]\n{overrides}"
            ),
            Origin::Embedded,
        )
        .expect("config")
    }

    fn change(mode: ModeName, said: Option<ModeName>) -> Change {
        Change {
            mode,
            config_said: said,
            uid: 0,
            reason: "test".into(),
            time: "2026-11-23T00:00:00Z".into(),
        }
    }

    #[test]
    fn a_runtime_change_lasts_until_the_config_value_it_overrode_changes() {
        let mount = Path::new("/cg");
        let mut r = RuntimeModes {
            global: Some(change(ModeName::Enforce, Some(ModeName::Observe))),
            ..Default::default()
        };
        let e = r.apply(&config("observe", ""), mount);
        assert_eq!(e.mode, Mode::Enforce, "config unchanged: the switch stays");
        assert!(e.dropped.is_empty() && r.global.is_some());
        let e = r.apply(&config("enforce", ""), mount);
        assert_eq!(e.mode, Mode::Enforce);
        assert_eq!(e.dropped.len(), 1, "config edited: it wins");
        assert!(r.global.is_none());
    }

    #[test]
    fn cgroup_changes_layer_over_config_overrides() {
        let mount = Path::new("/cg");
        let ov = "[[scope.override]]\ncgroup = \"svc/a\"\nmode = \"observe\"\n";
        let mut r = RuntimeModes::default();
        r.cgroups.insert(
            "/cg/svc/a".into(),
            change(ModeName::Enforce, Some(ModeName::Observe)),
        );
        r.cgroups
            .insert("/cg/svc/b".into(), change(ModeName::Enforce, None));
        let e = r.apply(&config("observe", ov), mount);
        assert_eq!(
            e.overrides,
            vec![
                ModeOverride {
                    cgroup: "/cg/svc/a".into(),
                    mode: Mode::Enforce
                },
                ModeOverride {
                    cgroup: "/cg/svc/b".into(),
                    mode: Mode::Enforce
                },
            ]
        );
        assert!(e.dropped.is_empty());
        // The config now has an override for svc/b: the runtime one goes.
        let ov2 = format!("{ov}[[scope.override]]\ncgroup = \"svc/b\"\nmode = \"observe\"\n");
        let e = r.apply(&config("observe", &ov2), mount);
        assert_eq!(e.dropped.len(), 1, "{:?}", e.dropped);
        assert!(
            e.overrides
                .iter()
                .any(|o| o.cgroup == Path::new("/cg/svc/b") && o.mode == Mode::Observe)
        );
    }

    #[test]
    fn state_file_round_trips_and_a_corrupt_one_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runtime-mode.json");
        assert_eq!(
            RuntimeModes::load(&path).expect("missing is empty"),
            RuntimeModes::default()
        );
        let r = RuntimeModes {
            global: Some(change(ModeName::Enforce, Some(ModeName::Observe))),
            ..Default::default()
        };
        r.save(&path).expect("save");
        assert_eq!(RuntimeModes::load(&path).expect("load"), r);
        RuntimeModes::default().save(&path).expect("save empty");
        assert!(!path.exists(), "nothing left: no file");
        std::fs::write(&path, "{not json").expect("write");
        let e = RuntimeModes::load(&path).expect_err("corrupt").to_string();
        assert!(
            e.contains("runtime-mode.json") && e.contains("remove it"),
            "{e}"
        );
    }
}
