//! One frame of `enforcer top` as lines of plain text: the same text on the
//! terminal (redrawn in place) and with `--once` (printed), so what a
//! script or a test reads is what an operator sees.

use std::fmt::Write as _;

use super::model::{Events, Snapshot, rate, verdicts};

/// What a frame is drawn from.
pub struct View<'a> {
    pub current: Option<&'a Snapshot>,
    pub previous: Option<&'a Snapshot>,
    pub events: &'a Events,
    /// Events received live per second over the last interval.
    pub events_rate: Option<f64>,
    /// The last status request's error, when it failed.
    pub status_error: Option<&'a str>,
    /// Status answers received so far (the frame's number).
    pub refresh: u64,
    pub interval_seconds: f64,
    /// Wall-clock time of the frame (RFC 3339, UTC).
    pub now_rfc3339: String,
    /// Live (keys work) or one frame.
    pub live: bool,
}

const COUNTRY_W: usize = 8;
const SCOPE_W: usize = 44;
const TOTAL_W: usize = 11;
const RATE_W: usize = 8;

/// The frame, at most `height` lines (None: every row) of at most `width`
/// characters (None: as long as they are).
pub fn frame(v: &View<'_>, width: Option<usize>, height: Option<usize>) -> Vec<String> {
    let mut head = Vec::new();
    let clock = v.now_rfc3339.get(11..19).unwrap_or("-");
    let mut title = format!(
        "enforcer top  refresh #{} at {clock} UTC, every {}s",
        v.refresh,
        trim_float(v.interval_seconds)
    );
    if let Some(s) = v.current {
        let _ = write!(
            title,
            "  agent pid {} v{} up {}",
            s.agent_pid.map_or_else(|| "-".into(), |p| p.to_string()),
            s.version,
            duration(s.uptime_seconds)
        );
    }
    title.push_str(if v.live {
        "  (q quits)"
    } else {
        "  (one frame)"
    });
    head.push(title);
    if let Some(e) = v.status_error {
        // The note first: the error may be longer than the line.
        head.push(format!(
            "AGENT NOT ANSWERING{}: {e}",
            if v.current.is_some() {
                " (the figures below are its last answer)"
            } else {
                ""
            }
        ));
    }
    let Some(s) = v.current else {
        return fit(head, width, height);
    };
    let seconds = match (s.at, v.previous.and_then(|p| p.at)) {
        (Some(now), Some(before)) => now.duration_since(before).as_secs_f64(),
        _ => 0.0,
    };
    let prev = v.previous;
    head.push(format!(
        "mode       {} (from {}), {} per-cgroup override{}   policy generation {}",
        s.mode,
        if s.mode_source == "runtime" {
            "`enforcer mode`"
        } else {
            "the config"
        },
        s.overrides,
        if s.overrides == 1 { "" } else { "s" },
        s.generation
    ));
    let covered = s.coverage.get("covered").copied().unwrap_or(0);
    let waiting = s.coverage.get("waiting").copied().unwrap_or(0);
    let not_covered: usize = s
        .coverage
        .iter()
        .filter(|(k, _)| *k != "covered" && *k != "waiting")
        .map(|(_, n)| n)
        .sum();
    head.push(format!(
        "coverage   {covered} scope entr{} attached, {waiting} waiting (not created yet), {not_covered} NOT covered",
        if covered == 1 { "y" } else { "ies" }
    ));
    let dbs: Vec<String> = s
        .databases
        .iter()
        .map(|d| {
            let mut t = d.name.clone();
            match (d.build_epoch, d.age_days) {
                (Some(epoch), Some(age)) => {
                    let built = humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch),
                    )
                    .to_string();
                    let _ = write!(
                        t,
                        " built {} ({age} days old",
                        built.get(..10).unwrap_or("-")
                    );
                    match (d.too_old, d.max_age_days) {
                        (true, Some(max)) => {
                            let _ = write!(t, ", TOO OLD: geoip.max_age is {max} days)");
                        }
                        (false, Some(max)) => {
                            let _ = write!(t, ", within geoip.max_age {max} days)");
                        }
                        _ => t.push(')'),
                    }
                }
                _ => t.push_str(" (no build time)"),
            }
            t
        })
        .collect();
    head.push(format!(
        "database   {}",
        if dbs.is_empty() {
            "-".to_owned()
        } else {
            dbs.join("; ")
        }
    ));
    let srate = |now: u64, before: Option<u64>| fmt_rate(rate(now, before, seconds));
    head.push(format!(
        "events     {}/s received ({} since top started{})   suppressed in the kernel: rate_limit {} ({}/s), ring_full {} ({}/s)",
        fmt_rate(v.events_rate),
        v.events.live,
        if v.events.lagged > 0 {
            format!(", {} not delivered to this view", v.events.lagged)
        } else {
            String::new()
        },
        s.suppressed_rate_limit,
        srate(
            s.suppressed_rate_limit,
            prev.map(|p| p.suppressed_rate_limit)
        ),
        s.suppressed_ring_full,
        srate(s.suppressed_ring_full, prev.map(|p| p.suppressed_ring_full)),
    ));
    if let Some(down) = &v.events.down {
        head.push(format!("event stream down: {down}"));
    }
    if let Some(e) = &s.last_error {
        head.push(format!("LAST LOAD FAILED: {e}"));
    }
    head.push(readiness(s));
    head.push(String::new());

    // Decisions, most refused first.
    let labels: Vec<&str> = verdicts().collect();
    let mut dec_head = pad("COUNTRY", COUNTRY_W) + " " + &pad("SCOPE", SCOPE_W);
    for l in &labels {
        let _ = write!(
            dec_head,
            " {:>TOTAL_W$} {:>RATE_W$}",
            l.to_uppercase(),
            "/s"
        );
    }
    let refused = |row: &[u64]| -> u64 {
        labels
            .iter()
            .zip(row)
            .filter(|(l, _)| **l == "denied" || **l == "would_deny")
            .map(|(_, n)| *n)
            .sum()
    };
    let mut rows: Vec<(&(String, String), &Vec<u64>)> = s.decisions.iter().collect();
    rows.sort_by(|a, b| {
        refused(b.1)
            .cmp(&refused(a.1))
            .then(b.1.iter().sum::<u64>().cmp(&a.1.iter().sum::<u64>()))
            .then(a.0.cmp(b.0))
    });
    let row_line = |country: &str, scope: &str, now: &[u64], before: Option<Vec<u64>>| {
        let mut line = pad(country, COUNTRY_W) + " " + &pad(&tail(scope, SCOPE_W), SCOPE_W);
        for (i, n) in now.iter().enumerate() {
            let r = rate(*n, before.as_ref().map(|b| b[i]), seconds);
            let _ = write!(line, " {n:>TOTAL_W$} {:>RATE_W$}", fmt_rate(r));
        }
        line
    };
    let dec_lines: Vec<String> = rows
        .iter()
        .map(|(key, now)| {
            let before = prev.map(|p| {
                p.decisions
                    .get(*key)
                    .cloned()
                    .unwrap_or_else(|| vec![0; now.len()])
            });
            row_line(&key.0, &key.1, now, before)
        })
        .collect();
    let total_line = row_line("TOTAL", "", &s.totals(), prev.map(Snapshot::totals));

    // Destinations, most recent first.
    let dests = v.events.by_recency();
    let dest_head = format!(
        "{} {} {:>8} {:>6} {} {} {:>4} {:>7}  LAST SEEN",
        pad("VERDICT", 10),
        pad("COMM", 16),
        "PID",
        "UID",
        pad("SCOPE", SCOPE_W),
        pad("DESTINATION", 42),
        "CTRY",
        "COUNT"
    );
    let dest_lines: Vec<String> = dests
        .iter()
        .map(|(k, st)| {
            format!(
                "{} {} {:>8} {:>6} {} {} {:>4} {:>7}  {}",
                pad(&k.verdict, 10),
                pad(&tail(&k.comm, 16), 16),
                k.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                k.uid.map_or_else(|| "-".into(), |u| u.to_string()),
                pad(&tail(&k.scope, SCOPE_W), SCOPE_W),
                pad(&tail(&k.destination, 42), 42),
                k.country,
                st.count,
                st.last_seen.get(11..19).unwrap_or(&st.last_seen)
            )
        })
        .collect();

    // Fit the two tables in what the header leaves: each gets what it
    // needs while both fit, else half (at least 3 rows) each.
    let fixed = head.len() + 2 + 1 + 1 + 2; // titles, column heads, total, gap
    let (dec_n, dest_n) = match height {
        None => (dec_lines.len(), dest_lines.len()),
        Some(h) => {
            let room = h.saturating_sub(fixed + 2); // "more" lines
            let dec = dec_lines
                .len()
                .min(room.saturating_sub(dest_lines.len().min(room / 2)).max(3));
            (dec, dest_lines.len().min(room.saturating_sub(dec)))
        }
    };
    let mut out = head;
    out.push("DECISIONS (connections) by destination country and scope: totals since the datapath was loaded, and per second".into());
    out.push(dec_head);
    out.extend(dec_lines.iter().take(dec_n).cloned());
    if dec_lines.len() > dec_n {
        out.push(format!("  ... {} more rows", dec_lines.len() - dec_n));
    }
    out.push(total_line);
    out.push(String::new());
    out.push(format!(
        "WOULD-DENY AND DENIED DESTINATIONS (from the event stream, most recent first): {}",
        dests.len()
    ));
    out.push(dest_head);
    out.extend(dest_lines.iter().take(dest_n).cloned());
    if dest_lines.len() > dest_n {
        out.push(format!(
            "  ... {} more (a taller terminal, or --once, shows them)",
            dest_lines.len() - dest_n
        ));
    }
    fit(out, width, height)
}

/// The line an operator reads before switching to enforce: what would be
/// refused, whether every scope entry is covered, whether the data is fresh.
fn readiness(s: &Snapshot) -> String {
    let labels: Vec<&str> = verdicts().collect();
    let at = |name: &str| labels.iter().position(|l| *l == name);
    let mut by_country: std::collections::BTreeMap<&str, u64> = Default::default();
    for ((country, _), row) in &s.decisions {
        let n: u64 = [at("would_deny"), at("denied")]
            .into_iter()
            .flatten()
            .map(|i| row[i])
            .sum();
        if n > 0 {
            *by_country.entry(country.as_str()).or_default() += n;
        }
    }
    let mut countries: Vec<(&str, u64)> = by_country.into_iter().collect();
    countries.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let total: u64 = countries.iter().map(|c| c.1).sum();
    let refusals = if total == 0 {
        "nothing refused or would be".to_owned()
    } else {
        let top: Vec<String> = countries
            .iter()
            .take(5)
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        format!(
            "{total} connection{} refused or would be ({})",
            if total == 1 { "" } else { "s" },
            top.join(", ")
        )
    };
    let uncovered: usize = s
        .coverage
        .iter()
        .filter(|(k, _)| *k != "covered")
        .map(|(_, n)| n)
        .sum();
    let coverage = if uncovered == 0 {
        "every scope entry attached".to_owned()
    } else {
        format!(
            "{uncovered} scope entr{} not attached",
            if uncovered == 1 { "y" } else { "ies" }
        )
    };
    let data = if s.databases.iter().any(|d| d.too_old) {
        "a database is TOO OLD"
    } else {
        "databases within their age limit"
    };
    format!("before enforce: {refusals}; {coverage}; {data}")
}

fn fit(lines: Vec<String>, width: Option<usize>, height: Option<usize>) -> Vec<String> {
    let mut lines: Vec<String> = match width {
        None => lines,
        Some(w) => lines
            .into_iter()
            .map(|l| l.chars().take(w).collect())
            .collect(),
    };
    if let Some(h) = height {
        lines.truncate(h);
    }
    lines
}

/// `s` left-aligned in `w` characters (longer strings are kept whole).
fn pad(s: &str, w: usize) -> String {
    format!("{s:<w$}")
}

/// The end of `s` in at most `w` characters, `..` marking a cut (a scope
/// or a cgroup path is told apart by its end).
fn tail(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_owned();
    }
    let keep: String = s.chars().skip(n - (w - 2)).collect();
    format!("..{keep}")
}

fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.1}");
    s.strip_suffix(".0").map_or(s.clone(), str::to_owned)
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn snapshot(at: Instant, us_would_deny: u64) -> Snapshot {
        let v = serde_json::json!({
            "agent": {
                "pid": 42, "version": "0.1.0", "uptime_seconds": 3700, "mode": "observe",
                "mode_source": "config", "overrides": [], "generation": 3,
                "coverage": [{"state": "covered"}],
                "databases": [{"path": "/x/test.csv"}],
            },
            "kernel": {
                "decisions": [
                    {"country": "US", "scope": null, "allowed": 0, "denied": 0, "would_deny": us_would_deny, "exempt": 0},
                    {"country": "DE", "scope": null, "allowed": 10, "denied": 0, "would_deny": 0, "exempt": 0},
                ],
                "events_suppressed": {"rate_limit": 0, "ring_full": 0},
            },
        });
        Snapshot::from_status(&v, at)
    }

    #[test]
    fn a_frame_shows_totals_rates_and_destinations() {
        let t0 = Instant::now();
        let before = snapshot(t0, 4);
        let now = snapshot(t0 + Duration::from_secs(2), 10);
        let mut events = Events::default();
        events.line(
            r#"{"time":"2026-12-06T23:59:01.5Z","verdict":"would_deny","dst":"198.51.100.20","dport":7000,"comm":"ee-probe","pid":77,"tgid":77,"uid":0,"country":"US"}"#,
            false,
            &[],
        );
        let view = View {
            current: Some(&now),
            previous: Some(&before),
            events: &events,
            events_rate: Some(0.5),
            status_error: None,
            refresh: 7,
            interval_seconds: 1.0,
            now_rfc3339: "2026-12-06T23:59:02Z".into(),
            live: false,
        };
        let lines = frame(&view, None, None);
        let text = lines.join("\n");
        assert!(
            lines[0].starts_with(
                "enforcer top  refresh #7 at 23:59:02 UTC, every 1s  agent pid 42 v0.1.0 up 1h01m"
            ),
            "{text}"
        );
        let us = lines
            .iter()
            .find(|l| l.starts_with("US "))
            .unwrap_or_else(|| panic!("no US row:\n{text}"));
        let f: Vec<&str> = us.split_whitespace().collect();
        // country, scope, then total and rate per verdict.
        assert_eq!(
            f,
            [
                "US", "(all)", "0", "0.0", "0", "0.0", "10", "3.0", "0", "0.0"
            ],
            "{text}"
        );
        let de = lines
            .iter()
            .position(|l| l.starts_with("DE "))
            .expect("DE row");
        let us = lines
            .iter()
            .position(|l| l.starts_with("US "))
            .expect("US row");
        assert!(us < de, "the most refused first:\n{text}");
        assert!(text.contains("TOTAL"), "{text}");
        let dest = lines
            .iter()
            .find(|l| l.starts_with("would_deny "))
            .unwrap_or_else(|| panic!("no destination row:\n{text}"));
        let f: Vec<&str> = dest.split_whitespace().collect();
        assert_eq!(
            f,
            [
                "would_deny",
                "ee-probe",
                "77",
                "0",
                "-",
                "198.51.100.20:7000",
                "US",
                "1",
                "23:59:01"
            ],
            "{text}"
        );
        assert!(
            text.contains("before enforce: 10 connections refused or would be (US 10)"),
            "{text}"
        );
        // A small terminal: cut to its size.
        let small = frame(&view, Some(40), Some(12));
        assert!(
            small.len() <= 12 && small.iter().all(|l| l.chars().count() <= 40),
            "{small:#?}"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(tail("/sys/fs/cgroup/a.slice/b.service", 12), "../b.service");
        assert_eq!(tail("short", 12), "short");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(61), "1m01s");
        assert_eq!(duration(3700), "1h01m");
        assert_eq!(duration(90_000), "1d01h");
        assert_eq!(fmt_rate(Some(2.26)), "2.3");
        assert_eq!(fmt_rate(None), "-");
        assert_eq!(trim_float(0.5), "0.5");
    }
}
