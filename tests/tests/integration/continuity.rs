//! Continuity: a client that never stops connecting (`ee-probe stream`, TCP
//! connect() then a nonce echoed back, back to back, round-robin over
//! approved and non-approved peers, IPv4, IPv6 and IPv4-mapped) sees no
//! wrong verdict
//! - while the agent is killed with SIGKILL, nothing runs, and a new agent
//!   starts and adopts the pinned datapath; and the kernel counters after
//!   each restart are at least what they were before the kill;
//! - while the agent reloads, back and forth, between two databases that
//!   move prefixes between an approved and a non-approved country: every
//!   connection gets the verdict of one database or the other, and once
//!   one got the new database's verdict, none that starts after it gets the
//!   old one's.
//!
//! A connection in flight when a reload flips the slot is decided again by
//! the packet hook (the policy generation changed): one the old database
//! let connect and the new one refuses has its next packets dropped, and
//! the client sees a timeout, not EPERM. That is the new database's
//! verdict, and counted as such only for a moved destination the new
//! database refuses, in flight across the reload, with the packet hook
//! having counted at least that many dropped packets.
//!
//! The probe stamps each attempt with CLOCK_MONOTONIC; the test stamps its
//! own actions (kill, start, reload sent, reload seen in the metrics) with
//! the same clock, which is how attempts are put in phases. Nothing here
//! asserts on durations: the test waits for enough attempts in each phase.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use enforcer_tests::{
    agent::Agent,
    metrics::Metrics,
    privileged,
    probe::{ECHO_PORT, Runner, StreamAttempt, monotonic_ns},
    scenario::*,
    skip_unless,
};

/// Bounds of one stream: far more than a test needs; the test stops it.
const STREAM_MAX: Duration = Duration::from_secs(90);
const STREAM_MAX_COUNT: u64 = 1_000_000;

/// Attempts waited for in each phase the test controls (several per
/// destination).
const PER_PHASE: usize = 60;

/// How the datapath must treat a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Allowed,
    Refused,
}

/// What one attempt got: through (data both ways), refused by the
/// datapath (EPERM from connect()), timed out (only right for a connection
/// cut by a reload, see the module doc), or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Refused,
    TimedOut,
    Other,
}

fn outcome(a: &StreamAttempt) -> Outcome {
    if a.ok {
        Outcome::Allowed
    } else if a.refused() {
        Outcome::Refused
    } else if a.timeout {
        Outcome::TimedOut
    } else {
        Outcome::Other
    }
}

fn dst(ip: impl Into<IpAddr>) -> SocketAddr {
    SocketAddr::new(ip.into(), ECHO_PORT)
}

/// The fixed peers: approved and not, over IPv4, IPv6 and IPv4-mapped IPv6.
fn controls() -> Vec<(SocketAddr, Expect)> {
    vec![
        (dst(APPROVED_V4), Expect::Allowed),
        (dst(DENIED_V4), Expect::Refused),
        (dst(APPROVED_V6), Expect::Allowed),
        (dst(DENIED_V6), Expect::Refused),
        (dst(mapped(APPROVED_V4)), Expect::Allowed),
        (dst(mapped(DENIED_V4)), Expect::Refused),
    ]
}

/// The test's own instants, each opening a phase that lasts until the
/// next; an attempt belongs to the phase it started in.
#[derive(Default)]
struct Timeline {
    /// (CLOCK_MONOTONIC ns, phase name)
    marks: Vec<(u64, String)>,
}

impl Timeline {
    fn mark(&mut self, phase: impl Into<String>) -> u64 {
        let t = monotonic_ns();
        self.marks.push((t, phase.into()));
        t
    }

    fn phase_of(&self, a: &StreamAttempt) -> &str {
        self.marks
            .iter()
            .rev()
            .find(|(t, _)| *t <= a.start_ns)
            .or(self.marks.first())
            .map_or("-", |(_, p)| p.as_str())
    }

    /// Attempts per phase (in order) and destination, as a table.
    fn report(&self, attempts: &[StreamAttempt], dsts: &[SocketAddr]) -> String {
        let mut counts: BTreeMap<(&str, SocketAddr), usize> = BTreeMap::new();
        for a in attempts {
            *counts.entry((self.phase_of(a), a.dst)).or_default() += 1;
        }
        let mut out = format!("{:<34}", "attempts per phase");
        for d in dsts {
            let _ = write!(out, " {:>22}", d.to_string());
        }
        out.push('\n');
        for (_, phase) in &self.marks {
            let _ = write!(out, "{phase:<34}");
            for d in dsts {
                let n = counts.get(&(phase.as_str(), *d)).copied().unwrap_or(0);
                let _ = write!(out, " {n:>22}");
            }
            out.push('\n');
        }
        let _ = writeln!(out, "total {} attempts", attempts.len());
        out
    }
}

/// The counters that live in the kernel's pinned maps, so continue across
/// agents (the others count what one agent process did).
const KERNEL_COUNTERS: &[&str] = &[
    "enforcer_connections_total",
    "enforcer_packets_total",
    "enforcer_bytes_total",
    "enforcer_events_suppressed_total",
];

/// Every kernel counter series of `before` is in `after`, at least as
/// high; what is not, said.
fn counters_went_down(before: &Metrics, after: &Metrics, round: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for name in KERNEL_COUNTERS {
        for s in before.series(name) {
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let now = after.sum(name, &labels);
            if now < s.value {
                problems.push(format!(
                    "restart {round}: {name}{labels:?} went from {} before the kill to {now} \
                     after the restart",
                    s.value
                ));
            }
            checked += 1;
        }
    }
    if before.sum("enforcer_connections_total", &[]) == 0.0 {
        problems.push(format!(
            "restart {round}: nothing was counted before the kill"
        ));
    }
    eprintln!(
        "restart {round}: {checked} kernel counter series compared, {} went down",
        problems.len()
    );
    problems
}

/// Counted in `phases` by (kind, destination), summed over rounds: every
/// kind of phase saw every destination.
fn assert_every_phase_saw_every_destination(
    timeline: &Timeline,
    attempts: &[StreamAttempt],
    dsts: &[SocketAddr],
    kind: impl Fn(&str) -> String,
) {
    let mut seen: BTreeMap<(String, SocketAddr), usize> = BTreeMap::new();
    for a in attempts {
        *seen.entry((kind(timeline.phase_of(a)), a.dst)).or_default() += 1;
    }
    let kinds: std::collections::BTreeSet<String> =
        timeline.marks.iter().map(|(_, p)| kind(p)).collect();
    for k in &kinds {
        for d in dsts {
            assert!(
                seen.get(&(k.clone(), *d)).copied().unwrap_or(0) > 0,
                "no attempt to {d} in any phase \"{k}\": the sequence was not covered\n{}",
                timeline.report(attempts, dsts)
            );
        }
    }
}

/// How many restarts: each one is a chance for a gap.
const RESTARTS: usize = 3;

#[test]
fn kill_9_and_restart_no_wrong_verdict_and_counters_continue() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let config = s.config("enforce", "allow", &[]);
    let mut agent = s.start(&config);
    let peers = controls();
    let dsts: Vec<SocketAddr> = peers.iter().map(|(d, _)| *d).collect();
    let mut stream = Runner::new(&s.sb).stream(&dsts, STREAM_MAX, STREAM_MAX_COUNT);
    let mut timeline = Timeline::default();
    let t = timeline.mark("agent 0 running");
    stream.wait_for(PER_PHASE, t);

    let mut generation = agent
        .scrape()
        .sum("enforcer_policy_generation", &[])
        .max(0.0);
    // Checked after the verdicts, which say the most when adoption fails.
    let mut problems = Vec::new();
    for round in 1..=RESTARTS {
        let before = agent.scrape();
        // From the kill on: attempts that start before the agent is gone
        // are in this phase too, and must be just as right.
        timeline.mark(format!("kill -9, no agent ({round})"));
        let status = agent.kill();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "the agent died of SIGKILL"
        );
        stream.wait_for(PER_PHASE, monotonic_ns());
        timeline.mark(format!("agent {round} starting"));
        agent = s.start(&config);
        let t = timeline.mark(format!("agent {round} running"));
        if !agent.log().contains("adopting") {
            problems.push(format!(
                "restart {round}: the new agent did not adopt the pinned datapath:\n{}",
                agent.log()
            ));
        }
        stream.wait_for(PER_PHASE, t);
        let after = agent.scrape();
        let went_down = counters_went_down(&before, &after, round);
        if !went_down.is_empty() {
            problems.extend(went_down);
            problems.push(format!("before:\n{}\nafter:\n{}", before.text, after.text));
        }
        let g = after.sum("enforcer_policy_generation", &[]);
        if g <= generation {
            problems.push(format!(
                "restart {round}: the policy generation did not continue from the pinned one \
                 ({generation} before, {g} after)"
            ));
        }
        generation = g;
    }
    let attempts = stream.stop();
    assert_no_wrong_verdict(&timeline, &attempts, &peers);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Every kind of phase (agent running, no agent, agent starting) saw
    // every destination, summed over the restarts.
    assert_every_phase_saw_every_destination(&timeline, &attempts, &dsts, |p| {
        p.split(|c: char| c.is_ascii_digit())
            .collect::<Vec<_>>()
            .join("#")
    });
}

/// Every attempt got the verdict its destination must get, in every phase.
fn assert_no_wrong_verdict(
    timeline: &Timeline,
    attempts: &[StreamAttempt],
    peers: &[(SocketAddr, Expect)],
) {
    let dsts: Vec<SocketAddr> = peers.iter().map(|(d, _)| *d).collect();
    let report = timeline.report(attempts, &dsts);
    eprintln!("{report}");
    let expect: BTreeMap<SocketAddr, Expect> = peers.iter().copied().collect();
    let wrong: Vec<String> = attempts
        .iter()
        .filter(|a| {
            let got = outcome(a);
            match expect[&a.dst] {
                Expect::Allowed => got != Outcome::Allowed,
                Expect::Refused => got != Outcome::Refused,
            }
        })
        .map(|a| {
            format!(
                "{} ({:?} expected): {a:?}",
                timeline.phase_of(a),
                expect[&a.dst]
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} attempts got the wrong verdict, first ones:\n{}\n{report}",
        wrong.len(),
        attempts.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}

/// The previous release's agent (`EE_PREVIOUS_ENFORCER_BIN`, built by
/// `cargo xtask test` from the last commit of the previous datapath
/// layout) runs and enforces; it is stopped and the agent under test
/// starts with the same config and pin directory. A client connecting
/// without pause sees no wrong verdict at any moment: while the old agent
/// runs, while none runs (its pins enforce), while the new one starts and
/// after. With the same layout the new agent adopts the pins; with another
/// it attaches its own programs before it detaches the old ones, and then
/// only its own layout's pins remain.
#[test]
fn upgrade_from_the_previous_release_no_wrong_verdict() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let previous = enforcer_tests::agent::previous_agent_binary();
    skip_unless!(
        previous.is_some(),
        "{}",
        enforcer_tests::agent::PREVIOUS_MISSING
    );
    let previous = previous.unwrap_or_default();
    let s = Scenario::new();
    let config = s.config("enforce", "allow", &[]);
    let config_path = s.dir.path().join("enforcer.toml");
    std::fs::write(&config_path, &config).expect("write config");
    let mut old =
        Agent::start_binary(&previous, &config_path, &s.pin_dir, None).unwrap_or_else(|f| {
            panic!(
                "the previous agent failed to start ({}):\n{}",
                f.status, f.stderr
            )
        });
    let versions = |what: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&s.pin_dir)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", s.pin_dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('v') && n[1..].chars().all(|c| c.is_ascii_digit()))
            .collect();
        v.sort();
        v
    };
    let old_versions = versions("the previous agent's pins");
    assert_eq!(old_versions.len(), 1, "one layout pinned: {old_versions:?}");
    let ours = format!("v{}", enforcer_common::LAYOUT_VERSION);

    let peers = controls();
    let dsts: Vec<SocketAddr> = peers.iter().map(|(d, _)| *d).collect();
    let mut stream = Runner::new(&s.sb).stream(&dsts, STREAM_MAX, STREAM_MAX_COUNT);
    let mut timeline = Timeline::default();
    let t = timeline.mark("previous agent running");
    stream.wait_for(PER_PHASE, t);
    timeline.mark("previous agent stopping, then none");
    old.stop();
    stream.wait_for(PER_PHASE, monotonic_ns());
    // The old handle must not uninstall what the new agent takes over.
    old.leave_pins();
    drop(old);
    timeline.mark("agent under test starting");
    let mut agent = s.start(&config);
    let t = timeline.mark("agent under test running");
    stream.wait_for(PER_PHASE, t);
    let attempts = stream.stop();
    assert_no_wrong_verdict(&timeline, &attempts, &peers);
    assert_every_phase_saw_every_destination(&timeline, &attempts, &dsts, str::to_owned);

    assert_eq!(
        versions("after the upgrade"),
        vec![ours.clone()],
        "only this layout's pins remain"
    );
    if old_versions == [ours] {
        assert!(
            agent.log().contains("adopting"),
            "same layout: adopted\n{}",
            agent.log()
        );
    } else {
        assert!(
            agent
                .log()
                .contains("detached and removed the pins of another layout version"),
            "another layout: replaced\n{}",
            agent.log()
        );
    }
    agent.uninstall();
}

/// One of the two databases the reload test switches between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Db {
    A,
    B,
}

/// Approved in A (DE), not in B (US): the server's "unknown" addresses,
/// inside 198.51.100.24/29 and 2001:db8:1::30/124.
const MOVED_OUT_V4: Ipv4Addr = UNKNOWN_V4;
const MOVED_OUT_V6: Ipv6Addr = UNKNOWN_V6;
/// Not approved in A (US), approved in B (DE): the server's own addresses,
/// inside 198.51.100.0/30 and 2001:db8:1::/126.
const MOVED_IN_V4: Ipv4Addr = SERVER_V4;
const MOVED_IN_V6: Ipv6Addr = SERVER_V6;

/// IPv6 prefixes nobody connects to, whose country changes between two
/// approved ones (so no verdict changes): a reload rewrites them all, and
/// they sort between the IPv4 and the IPv6 moved prefixes in the order
/// the agent writes (IPv4 table, then IPv6 by address). An agent that wrote
/// the table in force instead of the inactive slot would leave a window of
/// thousands of writes in which the IPv4 moved prefixes already have the
/// new verdict and the IPv6 ones the old: the ordering check sees it.
const FILLERS: u16 = 8192;

/// Database A or B: the controls as in every test, the moved prefixes,
/// and the fillers.
fn database(db: Db) -> String {
    let (out, into, even, odd) = match db {
        Db::A => ("DE", "US", "DE", "FR"),
        Db::B => ("US", "DE", "FR", "DE"),
    };
    let mut csv = String::from(TEST_DB_CSV);
    let _ = writeln!(csv, "198.51.100.24/29,{out}");
    let _ = writeln!(csv, "2001:db8:1::30/124,{out}");
    let _ = writeln!(csv, "198.51.100.0/30,{into}");
    let _ = writeln!(csv, "2001:db8:1::/126,{into}");
    for i in 0..FILLERS {
        let country = if i % 2 == 0 { even } else { odd };
        let _ = writeln!(csv, "2001:db8:0:{i:x}::/64,{country}");
    }
    csv
}

/// Which database allows a moved destination.
fn allowed_by(d: SocketAddr) -> Option<Db> {
    let ip = d.ip().to_canonical();
    if ip == IpAddr::V4(MOVED_OUT_V4) || ip == IpAddr::V6(MOVED_OUT_V6) {
        Some(Db::A)
    } else if ip == IpAddr::V4(MOVED_IN_V4) || ip == IpAddr::V6(MOVED_IN_V6) {
        Some(Db::B)
    } else {
        None
    }
}

fn other(db: Db) -> Db {
    match db {
        Db::A => Db::B,
        Db::B => Db::A,
    }
}

/// The database whose verdict an attempt to a moved destination got at
/// connect(), if it got one of them.
fn verdict_of(a: &StreamAttempt) -> Option<Db> {
    let allows = allowed_by(a.dst)?;
    match outcome(a) {
        Outcome::Allowed => Some(allows),
        Outcome::Refused => Some(other(allows)),
        Outcome::TimedOut | Outcome::Other => None,
    }
}

/// Asks the agent to reload its config and databases. One function, so
/// the test can switch to `enforcer reload` on the control socket.
fn trigger_reload(agent: &Agent) {
    agent.signal(nix::sys::signal::Signal::SIGHUP);
}

/// One reload: from which database to which, the instant it was asked
/// for and the instant the metrics showed it done.
struct Reload {
    from: Db,
    to: Db,
    asked_ns: u64,
    seen_ns: u64,
}

/// Back and forth, bounded.
const SEQUENCE: [Db; 5] = [Db::A, Db::B, Db::A, Db::B, Db::A];

#[test]
fn reloads_between_two_databases_give_one_verdict_or_the_other_in_order() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    std::fs::write(&s.db, database(SEQUENCE[0])).expect("write database A");
    let agent = s.start(&s.config("enforce", "deny", &[]));

    let moved = [
        dst(MOVED_OUT_V4),
        dst(MOVED_IN_V4),
        dst(MOVED_OUT_V6),
        dst(MOVED_IN_V6),
        dst(mapped(MOVED_OUT_V4)),
        dst(mapped(MOVED_IN_V4)),
    ];
    let peers = controls();
    // Moved and fixed destinations interleaved, IPv4 and IPv6 alternating.
    let dsts: Vec<SocketAddr> = moved
        .iter()
        .zip(peers.iter().map(|(d, _)| *d))
        .flat_map(|(m, c)| [*m, c])
        .collect();
    let mut stream = Runner::new(&s.sb).stream(&dsts, STREAM_MAX, STREAM_MAX_COUNT);
    let mut timeline = Timeline::default();
    let t = timeline.mark(format!("db {:?}", SEQUENCE[0]));
    stream.wait_for(PER_PHASE, t);

    let mut reloads = Vec::new();
    for (k, pair) in SEQUENCE.windows(2).enumerate() {
        let (from, to) = (pair[0], pair[1]);
        std::fs::write(&s.db, database(to)).expect("rewrite the database");
        let before = agent.scrape();
        let loads = before.sum("enforcer_policy_loads_total", &[("result", "success")]);
        let generation = before.sum("enforcer_policy_generation", &[]);
        let asked_ns = timeline.mark(format!("reload {} {from:?}->{to:?}", k + 1));
        trigger_reload(&agent);
        agent.wait_for_metrics(
            &format!("reload {} to take effect", k + 1),
            Duration::from_secs(60),
            |m| {
                m.sum("enforcer_policy_loads_total", &[("result", "success")]) > loads
                    && m.sum("enforcer_policy_generation", &[]) > generation
            },
        );
        let seen_ns = timeline.mark(format!("db {to:?} ({})", k + 1));
        reloads.push(Reload {
            from,
            to,
            asked_ns,
            seen_ns,
        });
        stream.wait_for(PER_PHASE, seen_ns);
    }
    let attempts = stream.stop();
    let m = agent.scrape();
    assert_eq!(
        m.sum("enforcer_policy_loads_total", &[("result", "failure")]),
        0.0,
        "{}",
        m.text
    );
    let report = timeline.report(&attempts, &dsts);
    eprintln!("{report}");

    let mut wrong = Vec::new();
    // Controls: always right.
    let expect: BTreeMap<SocketAddr, Expect> = peers.into_iter().collect();
    for a in attempts.iter().filter(|a| expect.contains_key(&a.dst)) {
        let ok = match expect[&a.dst] {
            Expect::Allowed => outcome(a) == Outcome::Allowed,
            Expect::Refused => outcome(a) == Outcome::Refused,
        };
        if !ok {
            wrong.push(format!(
                "control {} in {}: {a:?}",
                a.dst,
                timeline.phase_of(a)
            ));
        }
    }
    // Moved: one database's verdict; the right one outside the reloads;
    // and within a reload, once an attempt got the new verdict, no attempt
    // starting after it got the old one, whatever its destination.
    let moved: Vec<&StreamAttempt> = attempts
        .iter()
        .filter(|a| allowed_by(a.dst).is_some())
        .collect();
    let mut in_flight: Vec<Vec<(&StreamAttempt, Db)>> = vec![Vec::new(); reloads.len()];
    let mut cut = vec![0usize; reloads.len()];
    for a in &moved {
        // Which reload it overlaps, if any; else the database in force.
        let overlapping = reloads
            .iter()
            .position(|r| a.start_ns < r.seen_ns && a.end_ns >= r.asked_ns);
        let got = match (verdict_of(a), overlapping) {
            (Some(got), _) => got,
            // Connected under the old database, cut by the new one (see the
            // module doc): only where the new database refuses.
            (None, Some(k))
                if outcome(a) == Outcome::TimedOut
                    && allowed_by(a.dst) == Some(reloads[k].from) =>
            {
                eprintln!("reload {}: cut in flight: {a:?}", k + 1);
                cut[k] += 1;
                reloads[k].to
            }
            (None, _) => {
                wrong.push(format!(
                    "{} in {}: neither database's verdict: {a:?}",
                    a.dst,
                    timeline.phase_of(a)
                ));
                continue;
            }
        };
        if let Some(k) = overlapping {
            in_flight[k].push((a, got));
            continue;
        }
        let in_force = reloads
            .iter()
            .rev()
            .find(|r| a.start_ns >= r.seen_ns)
            .map_or(SEQUENCE[0], |r| r.to);
        if got != in_force {
            wrong.push(format!(
                "{} in {}: database {got:?}'s verdict while {in_force:?} is in force: {a:?}",
                a.dst,
                timeline.phase_of(a)
            ));
        }
    }
    // Each cut connection had at least one packet dropped by the packet
    // hook (nothing else here makes it drop: refused connections send none).
    let cuts: usize = cut.iter().sum();
    let dropped = m.sum(
        "enforcer_packets_total",
        &[("hook", "skb_egress"), ("verdict", "denied")],
    );
    if dropped < cuts as f64 {
        wrong.push(format!(
            "{cuts} connections timed out across a reload, but the packet hook dropped only \
             {dropped} packets: something else cut them\n{}",
            m.text
        ));
    }
    for (k, (r, list)) in reloads.iter().zip(&in_flight).enumerate() {
        let first_new = list
            .iter()
            .filter(|(_, got)| *got == r.to)
            .min_by_key(|(a, _)| a.end_ns);
        let old = list.iter().filter(|(_, got)| *got == r.from).count();
        eprintln!(
            "reload {} {:?}->{:?}: {} attempts to moved destinations overlapped it, {old} got \
             the old verdict, {} the new ({} of them connected under the old and were cut)",
            k + 1,
            r.from,
            r.to,
            list.len(),
            list.len() - old,
            cut[k]
        );
        if let Some((first, _)) = first_new {
            for (a, _) in list
                .iter()
                .filter(|(a, got)| *got == r.from && a.start_ns > first.end_ns)
            {
                wrong.push(format!(
                    "reload {}: {} got the old database's ({:?}) verdict after {} had the new \
                     one's: {a:?} after {first:?}",
                    k + 1,
                    a.dst,
                    r.from,
                    first.dst
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} attempts wrong, first ones:\n{}\n{report}",
        wrong.len(),
        attempts.len(),
        wrong[..wrong.len().min(10)].join("\n")
    );
}
