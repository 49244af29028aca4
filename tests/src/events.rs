//! Reading the agent's event file (JSON lines) in tests.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Every event written to `path` so far (none when it does not exist yet).
pub fn read(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}")))
        .collect()
}

/// Waits (up to 10 s) until `done` holds for the events in `path`, and
/// returns them; panics with what was there when it does not.
pub fn wait_for(path: &Path, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = read(path);
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; events so far:\n{}",
            events
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The events matching every `(field, value)` pair (values compared as
/// JSON: strings as strings, numbers as numbers).
pub fn matching<'a>(events: &'a [Value], fields: &[(&str, Value)]) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| fields.iter().all(|(k, v)| e.get(*k) == Some(v)))
        .collect()
}
