//! Fuzz target `config`: the agent's TOML config from text, parsed and
//! validated exactly as `enforcer config check` and `enforcer run` do
//! (`Config::parse` touches no file). Any text is a `Config` or a
//! `ConfigError`, never a panic or an overflow (a duration or size that
//! does not fit must be refused here, not found out after attach).
#![no_main]

use std::path::PathBuf;

use enforcer::config::{Config, Origin};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Origin::File(PathBuf::from("/etc/egress-enforcer/config.toml"));
    if let Ok(config) = Config::parse(text, origin) {
        // Durations the agent feeds to timers must be usable as deadlines.
        let now = std::time::Instant::now();
        assert!(now.checked_add(config.audit.checkpoint_interval).is_some());
    }
});
