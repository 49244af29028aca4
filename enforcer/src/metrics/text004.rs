//! The Prometheus text exposition format 0.0.4, converted from the
//! OpenMetrics text that prometheus-client encodes.
//!
//! prometheus-client 0.2x encodes only OpenMetrics. Scrapers that do not
//! ask for OpenMetrics (`promtool check metrics`, curl, older servers)
//! read its output as the 0.0.4 format, where a counter family `foo` with
//! a sample `foo_total` is two families, the second one without help or
//! type: promtool then reports "no help text" for every counter. This
//! module rewrites the few places where the two formats differ.

/// The content type of the 0.0.4 text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The content type of OpenMetrics 1.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics over anything else.
///
/// The OpenMetrics media type wins when its best quality is above zero
/// and not below the best of any other range (ties go to OpenMetrics, as
/// Prometheus lists it first). No header, `*/*` and `text/plain` get the
/// 0.0.4 format: that is what curl and promtool parse.
pub fn prefers_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    let mut best_om = 0.0_f32;
    let mut best_other = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if media.is_empty() {
            continue;
        }
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case("q")).then(|| v.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        if media == "application/openmetrics-text" {
            best_om = best_om.max(q);
        } else {
            best_other = best_other.max(q);
        }
    }
    best_om > 0.0 && best_om >= best_other
}

/// Converts an OpenMetrics exposition (as prometheus-client writes it: one
/// `# HELP`, `# TYPE` and optional `# UNIT` line before each family's
/// samples, `# EOF` at the end) to the 0.0.4 text format:
///
/// - `# EOF` and `# UNIT` lines are dropped (0.0.4 has neither);
/// - a counter family `foo` is announced as `foo_total` (its samples'
///   name), and its `foo_created` samples are dropped;
/// - `info`, `stateset` and `gaugehistogram` become `gauge`, `unknown`
///   becomes `untyped` (0.0.4 has no such types; their samples keep their
///   names: an info family `foo` is announced as `foo_info`);
/// - exemplars (`# {...}` after a sample's value) are dropped.
///
/// Timestamps are not converted (OpenMetrics uses seconds, 0.0.4
/// milliseconds): the agent exposes none.
pub fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    // HELP precedes TYPE, and the name to announce depends on the type:
    // hold the help until the TYPE line comes.
    let mut pending_help: Option<(&str, &str)> = None;
    // The current family's type, to drop counters' `_created` samples.
    let mut counter_family: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (announced, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "stateset" | "gaugehistogram" => (name.to_owned(), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            counter_family = (kind == "counter").then_some(name);
            if let Some((help_name, help)) = pending_help.take()
                && help_name == name
            {
                out.push_str(&format!("# HELP {announced} {help}\n"));
            }
            out.push_str(&format!("# TYPE {announced} {kind}\n"));
            continue;
        }
        if line == "# EOF" || line.starts_with("# UNIT ") || line.is_empty() {
            continue;
        }
        if line.starts_with('#') {
            // Some other comment: 0.0.4 allows comments.
            out.push_str(line);
            out.push('\n');
            continue;
        }
        if let Some(family) = counter_family {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            if line[..name_end].strip_prefix(family) == Some("_created") {
                continue;
            }
        }
        // An exemplar follows the value after " # ".
        let sample = line.split_once(" # ").map_or(line, |(s, _)| s);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// The families (as announced) whose `# HELP` is missing or empty, in
/// either format; promtool's lint rejects them.
pub fn families_without_help(text: &str) -> Vec<String> {
    let mut helped = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, help)) = rest.split_once(' ')
                && !help.trim().is_empty()
            {
                helped.insert(name.to_owned());
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap_or(rest);
            if !helped.contains(name) {
                missing.push(name.to_owned());
            }
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "\
# HELP enforcer_connections Connection-level decisions.
# TYPE enforcer_connections counter
enforcer_connections_total{hook=\"connect4\",verdict=\"allowed\"} 3
enforcer_connections_created{hook=\"connect4\",verdict=\"allowed\"} 1700000000.0
# HELP enforcer_mode The global mode.
# TYPE enforcer_mode gauge
enforcer_mode{mode=\"observe\"} 1
# HELP build Build.
# TYPE build info
build_info{version=\"1\"} 1
# HELP size_bytes A size.
# TYPE size_bytes gauge
# UNIT size_bytes bytes
size_bytes 7 # {trace=\"x\"} 1
# HELP odd Something.
# TYPE odd unknown
odd 2
# EOF
";

    #[test]
    fn converts_each_difference() {
        let text = from_openmetrics(OM);
        assert_eq!(
            text,
            "\
# HELP enforcer_connections_total Connection-level decisions.
# TYPE enforcer_connections_total counter
enforcer_connections_total{hook=\"connect4\",verdict=\"allowed\"} 3
# HELP enforcer_mode The global mode.
# TYPE enforcer_mode gauge
enforcer_mode{mode=\"observe\"} 1
# HELP build_info Build.
# TYPE build_info gauge
build_info{version=\"1\"} 1
# HELP size_bytes A size.
# TYPE size_bytes gauge
size_bytes 7
# HELP odd Something.
# TYPE odd untyped
odd 2
"
        );
        assert!(families_without_help(&text).is_empty());
    }

    #[test]
    fn keeps_a_family_that_only_starts_with_a_counters_name() {
        let om = "# HELP a A.\n# TYPE a counter\na_total 1\n# HELP a_created_x B.\n# TYPE a_created_x gauge\na_created_x 2\n# EOF\n";
        let text = from_openmetrics(om);
        assert!(text.contains("a_created_x 2\n"), "{text}");
        assert!(text.contains("# HELP a_total A.\n"), "{text}");
    }

    #[test]
    fn finds_families_without_help() {
        let text = "# HELP a \n# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# HELP c C.\n# TYPE c gauge\nc 1\n";
        assert_eq!(families_without_help(text), ["a", "b"]);
    }

    #[test]
    fn negotiates_like_scrapers_ask() {
        // Prometheus 2.x with OpenMetrics negotiation on.
        assert!(prefers_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        // Prometheus with OpenMetrics off.
        assert!(!prefers_openmetrics(Some(
            "text/plain;version=0.0.4;q=1,*/*;q=0.1"
        )));
        assert!(!prefers_openmetrics(None));
        assert!(!prefers_openmetrics(Some("*/*")));
        assert!(!prefers_openmetrics(Some("text/plain")));
        assert!(!prefers_openmetrics(Some(
            "application/openmetrics-text;q=0.2, text/plain"
        )));
        assert!(!prefers_openmetrics(Some(
            "application/openmetrics-text;q=0"
        )));
        assert!(prefers_openmetrics(Some("Application/OpenMetrics-Text")));
    }
}
