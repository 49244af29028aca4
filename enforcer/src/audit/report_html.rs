//! Renders a [`Report`] as one self-contained HTML page: inline CSS, charts
//! as hand-written inline SVG, no script, no external resource, so the
//! file opens the same offline, in a mail attachment or an archive years
//! later. Every figure comes from the [`Report`] value (the JSON output
//! prints the same value), never computed here.

use std::fmt::Write as _;

use super::report::{HostReport, Report, Segment, Verdicts, format_time, human, parse_time};

const ENFORCED: &str = "#2e7d32";
const OBSERVED: &str = "#f9a825";
const NOT_COVERED: &str = "#c62828";
const DENIED: &str = "#c62828";
const WOULD: &str = "#1565c0";

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A percentage as printed everywhere in the page.
pub fn pct(v: f64) -> String {
    format!("{v:.1}%")
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#212121;max-width:1200px}\
h1{font-size:24px}h2{font-size:20px;border-bottom:2px solid #9e9e9e;padding-bottom:4px;margin-top:36px}\
h3{font-size:16px;margin-top:24px}\
table{border-collapse:collapse;font-size:13px;margin:8px 0}\
td,th{border:1px solid #bdbdbd;padding:3px 6px;text-align:left;vertical-align:top}\
th{background:#eeeeee}td.n{text-align:right;font-variant-numeric:tabular-nums}td.t{white-space:nowrap}\
.bad{color:#b71c1c;font-weight:bold}.good{color:#1b5e20;font-weight:bold}\
.problems{border:3px solid #b71c1c;background:#ffebee;padding:8px 16px;margin:12px 0}\
.conclusion{font-size:16px;padding:8px 12px;border-left:6px solid #1b5e20;background:#f1f8e9}\
.conclusion.bad{border-left-color:#b71c1c;background:#ffebee}\
.hash{font-family:monospace;font-size:11px;word-break:break-all}\
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}\
.note{color:#616161;font-size:13px}";

/// The page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>egress-enforcer audit report</title><style>{STYLE}</style></head><body>\n\
         <h1>egress-enforcer audit report</h1>\n"
    );
    let _ = writeln!(
        o,
        "<p>{} host(s). Signatures: {}.</p>",
        r.hosts.len(),
        match &r.key {
            Some(k) => format!("checked with key <code>{}</code>", esc(k)),
            None => "not checked (no --key)".into(),
        }
    );
    if !r.ok {
        let _ = writeln!(
            o,
            "<div class=\"problems\"><p class=\"bad\">The input is not intact: see the problems below. \
             Figures after the first broken record are not counted as evidence.</p></div>"
        );
    }
    let _ = writeln!(o, "<h2>Conclusions</h2><ul>");
    for h in &r.hosts {
        let _ = writeln!(
            o,
            "<li><b>{}</b>: <span class=\"{}\">{}</span></li>",
            esc(&h.host),
            if h.ok { "good" } else { "bad" },
            esc(&h.conclusion)
        );
    }
    let _ = writeln!(o, "</ul>");
    for h in &r.hosts {
        host(&mut o, h);
    }
    let _ = writeln!(
        o,
        "<h2>How to read this report</h2><p class=\"note\">Shares of time: between two consecutive \
         records the state set by the first holds. Not covered: the chain is broken from there on, \
         records were dropped (gap), the agent crashed (a start without a stop: the whole interval \
         before it), the agent was stopped, no mode was stated since the agent started, or a scope's \
         last coverage record said waiting or failed. Refusals are <i>denied</i> events \
         (enforce mode); would-refusals are <i>would_deny</i> events (observe mode). Suppressed \
         events were not emitted by the kernel and are not attributed to a country, scope or \
         verdict. See docs/events-and-audit.md, \"The audit report\".</p></body></html>"
    );
    o
}

fn host(o: &mut String, h: &HostReport) {
    let _ = writeln!(o, "<h2>Host {}</h2>", esc(&h.host));
    let _ = writeln!(
        o,
        "<p class=\"conclusion{}\">{}</p>",
        if h.ok { "" } else { " bad" },
        esc(&h.conclusion)
    );
    if !h.problems.is_empty() {
        let _ = writeln!(
            o,
            "<div class=\"problems\"><p class=\"bad\">Problems:</p><ul>"
        );
        for p in &h.problems {
            let _ = writeln!(o, "<li class=\"bad\">{}</li>", esc(p));
        }
        let _ = writeln!(o, "</ul></div>");
    }
    let _ = writeln!(
        o,
        "<table><tr><th>host named by</th><td>{}</td></tr>\
         <tr><th>files (chain order)</th><td>{}</td></tr>\
         <tr><th>records</th><td>{}</td></tr>\
         <tr><th>period</th><td>{} .. {} ({})</td></tr>\
         <tr><th>chain</th><td class=\"{}\">{}</td></tr></table>",
        esc(&h.host_from),
        h.files
            .iter()
            .map(|f| esc(f))
            .collect::<Vec<_>>()
            .join("<br>"),
        h.records,
        esc(h.period.start.as_deref().unwrap_or("-")),
        esc(h.period.end.as_deref().unwrap_or("-")),
        human(h.period.duration_us),
        if h.chain.intact { "good" } else { "bad" },
        esc(&if h.chain.intact {
            format!("intact; {}", h.chain.tail.as_deref().unwrap_or(""))
        } else {
            format!("BROKEN: {}", h.chain.error.as_deref().unwrap_or("-"))
        })
    );

    let _ = writeln!(o, "<h3>Share of time per scope</h3>");
    let _ = writeln!(
        o,
        "<p class=\"legend\"><span style=\"background:{ENFORCED}\"></span>enforced\
         <span style=\"background:{OBSERVED}\"></span>observed\
         <span style=\"background:{NOT_COVERED}\"></span>not covered</p>"
    );
    timeline_svg(o, h);
    let _ = writeln!(
        o,
        "<table><tr><th>scope</th><th>enforced</th><th>observed</th><th>not covered</th>\
         <th>enforced time</th><th>observed time</th><th>not covered time</th></tr>"
    );
    for s in &h.scopes {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&s.scope),
            pct(s.enforced_pct),
            pct(s.observed_pct),
            pct(s.not_covered_pct),
            human(s.enforced_us),
            human(s.observed_us),
            human(s.not_covered_us)
        );
    }
    let _ = writeln!(o, "</table>");
    if !h.not_covered.is_empty() {
        let _ = writeln!(
            o,
            "<h3>Not covered ({})</h3><table><tr><th>from</th><th>to</th><th>for</th><th>why</th></tr>",
            h.not_covered.len()
        );
        for s in &h.not_covered {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"bad\">{}</td></tr>",
                esc(&s.start),
                esc(&s.end),
                human(s.to_us - s.from_us),
                esc(&s.why)
            );
        }
        let _ = writeln!(o, "</table>");
    }

    let _ = writeln!(
        o,
        "<h3>Refusals and would-refusals</h3><p>{} refusals (denied), {} would-refusals (would_deny); \
         {} events suppressed by the kernel (not attributed to a country, scope or verdict).</p>",
        h.events.total.denied, h.events.total.would_deny, h.events.suppressed_total
    );
    let _ = writeln!(
        o,
        "<p class=\"legend\"><span style=\"background:{DENIED}\"></span>refusals\
         <span style=\"background:{WOULD}\"></span>would-refusals</p>"
    );
    bars(o, "By country", &h.events.by_country, None);
    bars(o, "By scope", &h.events.by_scope, None);
    bars(
        o,
        "By day (UTC)",
        &h.events.by_day,
        Some(&h.events.suppressed_by_day),
    );

    let _ = writeln!(
        o,
        "<h3>Mode and policy timeline</h3><table><tr><th>time</th><th>seq</th><th>what</th>\
         <th>who</th><th>why</th><th>policy sha256</th><th>database sha256</th></tr>"
    );
    for e in &h.timeline {
        let _ = writeln!(
            o,
            "<tr><td class=\"t\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"hash\">{}</td><td class=\"hash\">{}</td></tr>",
            esc(&e.time),
            e.seq,
            esc(&e.what),
            esc(e.who.as_deref().unwrap_or("")),
            esc(e.why.as_deref().unwrap_or("")),
            esc(e.policy_sha256.as_deref().unwrap_or("")),
            e.database_sha256
                .iter()
                .map(|d| esc(d))
                .collect::<Vec<_>>()
                .join("<br>")
        );
    }
    let _ = writeln!(o, "</table>");

    let g = &h.signatures;
    let _ = writeln!(
        o,
        "<h3>Checkpoints</h3><p>{} checkpoints: {} verified, {} bad, {} unsigned, {} not checked.</p>\
         <table><tr><th>seq</th><th>time</th><th>mode</th><th>policy sha256</th><th>signature</th></tr>",
        g.checkpoints, g.verified, g.bad, g.unsigned, g.not_checked
    );
    for c in &h.checkpoints {
        let class = match c.status.as_str() {
            "verified" => "good",
            "bad" => "bad",
            _ => "",
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"hash\">{}</td>\
             <td class=\"{class}\">{}{}</td></tr>",
            c.seq,
            esc(&c.time),
            esc(&c.mode),
            esc(c.policy_sha256.as_deref().unwrap_or("")),
            esc(&c.status),
            c.detail
                .as_deref()
                .map(|d| format!(": {}", esc(d)))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(o, "</table>");
}

fn color(state: &str) -> &'static str {
    match state {
        "enforced" => ENFORCED,
        "observed" => OBSERVED,
        _ => NOT_COVERED,
    }
}

/// One row per scope: its segments over the period, left to right.
fn timeline_svg(o: &mut String, h: &HostReport) {
    const W: f64 = 1100.0;
    const LABEL: f64 = 260.0;
    const ROW: f64 = 26.0;
    let plot = W - LABEL - 10.0;
    let total = h.period.duration_us.max(1) as f64;
    let height = ROW * h.scopes.len() as f64 + 40.0;
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         viewBox=\"0 0 {W} {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">"
    );
    for (i, s) in h.scopes.iter().enumerate() {
        let y = i as f64 * ROW + 4.0;
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL}\" y=\"{y:.1}\" width=\"{plot:.1}\" height=\"{:.1}\" fill=\"#eeeeee\"/>",
            LABEL - 8.0,
            y + 15.0,
            esc(&shorten(&s.scope, 38)),
            ROW - 8.0
        );
        for seg in &s.segments {
            segment_rect(o, seg, LABEL, y, plot, total, ROW - 8.0);
        }
    }
    // The time axis: five ticks (start, quarters, end), each labelled
    // with its time to the second, anchored so that none leaves the plot.
    let y = h.scopes.len() as f64 * ROW;
    let start = h.period.start.as_deref().and_then(parse_time);
    for q in 0..=4u32 {
        let x = LABEL + plot * f64::from(q) / 4.0;
        let at = start.map(|s| s + (h.period.duration_us * u64::from(q) / 4) as i64);
        let label = at
            .map(|t| format_time(t).replace('T', " "))
            .map(|t| t.get(..19).unwrap_or_default().to_owned())
            .unwrap_or_default();
        let anchor = match q {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#616161\"/>\
             <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\">{}</text>",
            y,
            y + 5.0,
            y + 18.0,
            esc(&label)
        );
    }
    let _ = writeln!(o, "</svg>");
}

fn segment_rect(o: &mut String, s: &Segment, x0: f64, y: f64, plot: f64, total: f64, hgt: f64) {
    let x = x0 + s.from_us as f64 / total * plot;
    // At least half a pixel, so that a short outage stays visible.
    let w = ((s.to_us - s.from_us) as f64 / total * plot).max(0.5);
    let _ = writeln!(
        o,
        "<rect x=\"{x:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{hgt:.1}\" fill=\"{}\">\
         <title>{} .. {}: {}{}</title></rect>",
        color(&s.state),
        esc(&s.start),
        esc(&s.end),
        s.state,
        if s.why.is_empty() {
            String::new()
        } else {
            format!(" ({})", esc(&s.why))
        }
    );
}

fn shorten(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        s.to_owned()
    } else {
        let tail: String = s.chars().skip(count - (n - 1)).collect();
        format!("…{tail}")
    }
}

/// Horizontal bars, two per key (refusals, would-refusals), the counts
/// printed beside them; `extra` adds a suppressed column to the table.
fn bars(
    o: &mut String,
    title: &str,
    m: &std::collections::BTreeMap<String, Verdicts>,
    extra: Option<&std::collections::BTreeMap<String, u64>>,
) {
    let _ = writeln!(o, "<h4>{}</h4>", esc(title));
    if m.is_empty() {
        let _ = writeln!(o, "<p class=\"note\">No refusals or would-refusals.</p>");
    } else {
        const W: f64 = 900.0;
        const LABEL: f64 = 260.0;
        const ROW: f64 = 34.0;
        let plot = W - LABEL - 80.0;
        let max = m
            .values()
            .map(|v| v.denied.max(v.would_deny))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let height = ROW * m.len() as f64 + 6.0;
        let _ = writeln!(
            o,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
             viewBox=\"0 0 {W} {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">"
        );
        for (i, (k, v)) in m.iter().enumerate() {
            let y = i as f64 * ROW + 3.0;
            let _ = writeln!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                LABEL - 8.0,
                y + 18.0,
                esc(&shorten(k, 38))
            );
            for (j, (n, c)) in [(v.denied, DENIED), (v.would_deny, WOULD)]
                .into_iter()
                .enumerate()
            {
                let by = y + j as f64 * 14.0;
                let w = n as f64 / max * plot;
                let _ = writeln!(
                    o,
                    "<rect x=\"{LABEL}\" y=\"{by:.1}\" width=\"{w:.2}\" height=\"12\" fill=\"{c}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\">{n}</text>",
                    LABEL + w + 4.0,
                    by + 10.5
                );
            }
        }
        let _ = writeln!(o, "</svg>");
    }
    let keys: std::collections::BTreeSet<&String> = m
        .keys()
        .chain(extra.into_iter().flat_map(|e| e.keys()))
        .collect();
    if keys.is_empty() {
        return;
    }
    let _ = write!(
        o,
        "<table><tr><th></th><th>refusals</th><th>would-refusals</th>"
    );
    if extra.is_some() {
        let _ = write!(o, "<th>suppressed (not attributed)</th>");
    }
    let _ = writeln!(o, "</tr>");
    for k in keys {
        let v = m.get(k).cloned().unwrap_or_default();
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
            esc(k),
            v.denied,
            v.would_deny
        );
        if let Some(e) = extra {
            let _ = write!(o, "<td class=\"n\">{}</td>", e.get(k).copied().unwrap_or(0));
        }
        let _ = writeln!(o, "</tr>");
    }
    let _ = writeln!(o, "</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn an_empty_report_renders_without_external_resources() {
        let r = Report {
            key: None,
            ok: true,
            hosts: Vec::new(),
        };
        let html = render(&r);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("http://") || !html.contains("src="));
        assert!(!html.contains("<script"));
    }
}
