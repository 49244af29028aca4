//! Logging set-up for every verb: `tracing` to stderr, as text for people
//! or as JSON lines for log pipelines (`--log-format json`).
//!
//! Text has ANSI colours only when stderr is a terminal: under systemd,
//! journald stores the escape codes verbatim and `journalctl` shows them
//! as `ESC[2m...`.
//!
//! JSON is written by [`JsonLines`] rather than tracing-subscriber's own
//! JSON formatter, which turns every field recorded with `?` (the lists the
//! agent logs: approved countries, cgroups, files) into a string holding
//! Rust's debug text. Here such a value becomes a real JSON array when its
//! debug text is one, and stays a string otherwise.

use std::{fmt, io::IsTerminal as _};

use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

use super::LogFormat;

/// Installs the global subscriber. A bad filter is reported and replaced
/// by `info`, so a typo never silences the agent.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: bad log filter {filter:?} ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).init(),
    }
}

/// One JSON object per event: `timestamp` (RFC 3339, UTC), `level`, the
/// event's fields (`message` among them), `target`.
#[derive(Debug, Clone, Copy)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut object = Map::new();
        object.insert(
            "timestamp".into(),
            humantime::format_rfc3339_micros(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        object.insert("level".into(), meta.level().as_str().into());
        event.record(&mut Fields(&mut object));
        object.insert("target".into(), meta.target().into());
        let line = serde_json::to_string(&Value::Object(object)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// Collects an event's fields into a JSON object.
struct Fields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        self.0.insert(field.name().into(), structured(text));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), super::error_chain(value).into());
    }
}

/// A debug-formatted value: the JSON array it spells when it spells one
/// (a `Vec` of strings, paths or numbers does), else the text itself.
/// Anything Rust's debug syntax and JSON disagree on (tuples, structs,
/// `\u{..}` escapes) does not parse and stays a string, so nothing is
/// misread.
fn structured(text: String) -> Value {
    if text.starts_with('[')
        && let Ok(v @ Value::Array(_)) = serde_json::from_str::<Value>(&text)
    {
        return v;
    }
    Value::String(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_lists_become_arrays_and_the_rest_stays_text() {
        let list = vec!["DE".to_owned(), "FR".to_owned()];
        assert_eq!(
            structured(format!("{list:?}")),
            serde_json::json!(["DE", "FR"])
        );
        let paths = vec![std::path::PathBuf::from("/sys/fs/cgroup/a b")];
        assert_eq!(
            structured(format!("{paths:?}")),
            serde_json::json!(["/sys/fs/cgroup/a b"])
        );
        assert_eq!(
            structured(format!("{:?}", [1u32, 7])),
            serde_json::json!([1, 7])
        );
        let tuples = vec![("a", 1)];
        assert_eq!(
            structured(format!("{tuples:?}")),
            Value::String("[(\"a\", 1)]".into())
        );
        assert_eq!(
            structured("Some(3)".into()),
            Value::String("Some(3)".into())
        );
    }

    #[test]
    fn json_lines_hold_arrays_and_numbers() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let approved = vec!["DE", "FR"];
            tracing::info!(approved = ?approved, links = 3u64, "enforcer running");
        });
        let text = String::from_utf8(buf.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .expect("utf-8");
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["approved"], serde_json::json!(["DE", "FR"]));
        assert_eq!(line["links"], serde_json::json!(3));
        assert_eq!(line["message"], "enforcer running");
        assert_eq!(line["level"], "INFO");
        assert!(line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
