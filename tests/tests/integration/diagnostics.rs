//! The datapath reports its internal failures: each is counted in
//! `DP_ERRORS` (the agent's `enforcer_datapath_errors_total{kind}`) and
//! logged through aya-log into the agent's log, at most once a second per
//! CPU and kind. Provoked here by breaking what a correct agent never
//! breaks: a mode word that is not a mode (the datapath fails open, as
//! observe), and a verdict cache entry with a country out of range.
//! (`packet_header` cannot be provoked: the stack hands the packet hook
//! only whole IP headers, and `BPF_PROG_TEST_RUN` refuses a frame too
//! short for the one its EtherType announces, with EINVAL.)
//!
//! - `failures_are_counted_and_logged_under_test_run`: the library's view,
//!   with `BPF_PROG_TEST_RUN` on `skb_egress` (no cgroup, no agent): the
//!   exact counts, the records aya-log reads, the rate limit, and that a
//!   correct datapath reports nothing;
//! - `the_agent_logs_and_counts_datapath_failures`: the real agent, real
//!   connections from the sandbox's cgroup: the message in the agent's log
//!   and the metric; then what the programs log while no agent runs is
//!   logged by the next agent, which adopts the pinned log ring.

use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{CgroupSkb, TestRun, TestRunOptions},
};
use enforcer::{
    config::Config,
    datapath::{self, Datapath, diagnostics::FaultCounts},
    policy::CompiledPolicy,
};
use enforcer_common::{
    CFG_MODE, CONFIG, DEST_CACHE, DEST_CACHE_SLOTS, DestCacheEntry, Family, Fault, Mode, Outcome,
    Source, cfg_mode,
};
use enforcer_tests::{
    agent::Agent,
    privileged,
    probe::{Proto, attempt, attempts},
    sandbox::{PREFIX, addr, sweep_stale},
    scenario::{DENIED_V4, Scenario, TEST_DB_CSV},
    skip_unless,
    testrun::{self, PinDir, udp_frame},
};

/// cgroup_skb return values.
const PASS: u32 = 1;
const DROP: u32 = 0;

/// A mode word no mode has.
const NOT_A_MODE: u32 = 77;

/// Writes `CONFIG[index]` of the datapath pinned under `pin_dir`, as
/// nothing but a bug or a hand would.
fn set_config_word(pin_dir: &Path, index: u32, value: u32) {
    let map = datapath::open_pinned(pin_dir, CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let mut config: Array<MapData, u32> =
        Array::try_from(map).unwrap_or_else(|e| panic!("CONFIG: {e}"));
    config
        .set(index, value, 0)
        .unwrap_or_else(|e| panic!("CONFIG[{index}] = {value}: {e}"));
}

fn faults(reader: &FaultCounts) -> BTreeMap<Fault, u64> {
    reader
        .read()
        .unwrap_or_else(|e| panic!("reading DP_ERRORS: {e}"))
        .into_iter()
        .collect()
}

/// Runs `skb_egress` once on `data` and returns its verdict.
fn run(dp: &Datapath, data: &[u8]) -> u32 {
    let prog: &CgroupSkb = dp
        .program("skb_egress")
        .expect("skb_egress is in the datapath")
        .try_into()
        .expect("skb_egress is cgroup_skb");
    prog.test_run(TestRunOptions {
        data_in: Some(data),
        ..TestRunOptions::default()
    })
    .unwrap_or_else(|e| panic!("test_run skb_egress: {e}"))
    .return_value
}

#[test]
fn failures_are_counted_and_logged_under_test_run() {
    skip_unless!(privileged(), "needs root to load BPF programs");
    sweep_stale();
    // Per-CPU state (rate limits, caches) must be the same between runs.
    testrun::pin_to_one_cpu();
    let id = format!("{PREFIX}{}x0-diag", std::process::id());
    // Declared first so it is dropped last, after the datapath's fds.
    let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(&id));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .expect("scratch directory");
    fs::write(dir.path().join("test-geo.csv"), TEST_DB_CSV).expect("write the test database");
    let config_path = dir.path().join("enforcer.toml");
    fs::write(
        &config_path,
        format!(
            "mode = \"enforce\"\napproved = [\"EEA\"]\nunknown = \"allow\"\n\
             [geoip]\nsources = [\"test-geo.csv\"]\n\
             [scope]\ncgroups = [\"{id}-never-attached\"]\n\
             [agent]\npin_dir = {:?}\n",
            pins.0.display().to_string()
        ),
    )
    .expect("write the config");
    let config = Config::load(&config_path).unwrap_or_else(|e| panic!("config: {e}"));
    let policy = CompiledPolicy::compile(&config).unwrap_or_else(|e| panic!("policy: {e}"));
    let mut dp = Datapath::load(&config.pin_dir).unwrap_or_else(|e| panic!("load: {e}"));
    dp.install(&policy, Mode::Enforce)
        .unwrap_or_else(|e| panic!("install: {e}"));
    let mut log = dp
        .take_log()
        .unwrap_or_else(|e| panic!("the log ring: {e}"));
    assert!(dp.take_log().is_err(), "one reader per load");
    let counts = FaultCounts::open(&config.pin_dir).unwrap_or_else(|e| panic!("{e}"));
    let denied = udp_frame(IpAddr::V4(DENIED_V4));
    let approved = udp_frame(IpAddr::V4(addr::APPROVED_V4));

    // A correct datapath reports nothing.
    let none: BTreeMap<Fault, u64> = Fault::ALL.iter().map(|&f| (f, 0)).collect();
    assert_eq!(run(&dp, &approved), PASS);
    assert_eq!(run(&dp, &denied), DROP);
    assert_eq!(faults(&counts), none, "every kind is there, at zero");
    assert_eq!(log.drain(), [], "nothing logged");

    // A mode word that is not a mode: decided as observe (fails open).
    let slot = dp.active_slot().unwrap_or_else(|e| panic!("{e}"));
    let word = cfg_mode(slot);
    set_config_word(&config.pin_dir, word, NOT_A_MODE);
    let started = Instant::now();
    assert_eq!(run(&dp, &approved), PASS);
    assert_eq!(
        faults(&counts),
        none,
        "an approved destination needs no mode"
    );
    assert_eq!(run(&dp, &denied), PASS, "fails open, as observe");
    let mut want = none.clone();
    want.insert(Fault::ModeWord, 1);
    assert_eq!(faults(&counts), want);
    let records = log.drain();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0].level.as_str(), "ERROR");
    assert_eq!(records[0].module, "enforcer_ebpf::diagnostics");
    assert!(
        records[0].message.contains(&format!(
            "mode_word: CONFIG[{word}] holds {NOT_A_MODE}, which is not a mode; deciding as observe"
        )),
        "{records:#?}"
    );
    assert!(
        records[0].message.ends_with("(1 on this CPU)"),
        "{records:#?}"
    );
    // Counted every time, logged once a second at most (per CPU; this
    // thread runs on one).
    for _ in 0..20 {
        assert_eq!(run(&dp, &denied), PASS);
    }
    want.insert(Fault::ModeWord, 21);
    assert_eq!(faults(&counts), want);
    let again = log.drain();
    let seconds = started.elapsed().as_secs();
    assert!(
        again.len() as u64 <= seconds,
        "{} records of 20 more failures in {seconds} s: the log is not rate limited\n{again:#?}",
        again.len()
    );

    // Repaired (what `enforcer mode` does): enforced again, nothing new.
    dp.set_mode(Mode::Enforce)
        .unwrap_or_else(|e| panic!("set_mode: {e}"));
    assert_eq!(run(&dp, &denied), DROP);
    assert_eq!(faults(&counts), want);
    assert_eq!(log.drain(), [], "nothing more logged");

    // A verdict cache entry with a country no counter has: the packet is
    // allowed as cached, and neither its packet nor its bytes are counted
    // (two failures, one log record).
    let generation = datapath::config_words(&config.pin_dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .generation;
    poison_dest_cache(&config.pin_dir, addr::APPROVED_V4, generation, 0xfff0);
    assert_eq!(run(&dp, &approved), PASS);
    want.insert(Fault::CounterIndex, 2);
    assert_eq!(faults(&counts), want);
    let records = log.drain();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert!(
        records[0].message.contains(
            "counter_index: a decision with country 65520, outcome 0 is outside the counters; not counted"
        ),
        "{records:#?}"
    );
}

/// Fills every entry of `DEST_CACHE`, on every CPU, with an allowed
/// verdict for `dest` under `generation` that names country `country`:
/// whatever entry the datapath's hash picks, the next packet to `dest`
/// hits it.
fn poison_dest_cache(pin_dir: &Path, dest: Ipv4Addr, generation: u32, country: u16) {
    let map = datapath::open_pinned(pin_dir, DEST_CACHE).unwrap_or_else(|e| panic!("{e}"));
    let mut cache: PerCpuArray<MapData, DestCacheEntry> =
        PerCpuArray::try_from(map).unwrap_or_else(|e| panic!("DEST_CACHE: {e}"));
    let entry = DestCacheEntry {
        seq: 0,
        generation,
        daddr: [u64::from(u32::from_ne_bytes(dest.octets())), 0],
        country,
        outcome: Outcome::Allowed as u8,
        family: Family::Ipv4 as u8,
        source: Source::Geoip as u8,
        _pad: [0; 3],
    };
    let cpus = aya::util::nr_cpus().unwrap_or_else(|(what, e)| panic!("{what}: {e}"));
    for slot in 0..DEST_CACHE_SLOTS {
        let values = PerCpuValues::try_from(vec![entry; cpus]).expect("one value per CPU");
        cache
            .set(slot, values, 0)
            .unwrap_or_else(|e| panic!("DEST_CACHE[{slot}]: {e}"));
    }
}

/// Waits until the agent's log has a line with every one of `needles`, and
/// returns it.
fn wait_for_log_line(agent: &Agent, needles: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = agent.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in the agent's log after {timeout:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The lines the datapath logged of one kind.
fn datapath_lines(log: &str, kind: Fault) -> usize {
    let needle = format!("internal failure {}:", kind.label());
    log.lines()
        .filter(|l| l.contains("enforcer::datapath") && l.contains(&needle))
        .count()
}

/// Makes both slots' mode words garbage: whichever is active, the next
/// refused decision meets one.
fn break_mode_words(pin_dir: &Path) {
    for word in CFG_MODE {
        set_config_word(pin_dir, word, NOT_A_MODE);
    }
}

#[test]
fn the_agent_logs_and_counts_datapath_failures() {
    skip_unless!(privileged(), "needs root for namespaces, cgroups and BPF");
    let s = Scenario::new();
    let denied = IpAddr::V4(DENIED_V4);
    let config = s.config("enforce", "allow", &[]);
    let mut agent = s.start(&config);
    let kind = [("kind", Fault::ModeWord.label())];
    let m = agent.scrape();
    for f in Fault::ALL {
        assert_eq!(
            m.series("enforcer_datapath_errors_total")
                .iter()
                .filter(|x| x.labels.get("kind").map(String::as_str) == Some(f.label()))
                .map(|x| x.value)
                .collect::<Vec<_>>(),
            [0.0],
            "{}: exported from the start, at zero\n{}",
            f.label(),
            m.text
        );
    }
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());

    break_mode_words(&s.pin_dir);
    let started = Instant::now();
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "a mode word that is not a mode fails open, as observe"
    );
    let line = wait_for_log_line(
        &agent,
        &[
            "ERROR",
            "enforcer::datapath",
            "internal failure mode_word: CONFIG[",
            &format!("holds {NOT_A_MODE}, which is not a mode; deciding as observe"),
        ],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("enforcer_ebpf::diagnostics"),
        "the record names the eBPF module: {line}"
    );
    agent.wait_for_metrics("the mode_word failure", Duration::from_secs(5), |m| {
        m.sum("enforcer_datapath_errors_total", &kind) == 1.0
    });

    // Ten more: each counted, the log rate limited (per CPU and second).
    let more = attempts(&s.sb, Proto::Tcp, denied, 10);
    assert!(more.iter().all(|a| a.ok), "{more:?}");
    let m = agent.wait_for_metrics("eleven mode_word failures", Duration::from_secs(5), |m| {
        m.sum("enforcer_datapath_errors_total", &kind) == 11.0
    });
    // Records are read as they come; give the last ones time to arrive.
    std::thread::sleep(Duration::from_millis(500));
    let lines = datapath_lines(&agent.log(), Fault::ModeWord);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let bound = cpus * (started.elapsed().as_secs() + 1);
    assert!(
        (lines as u64) <= bound && lines < 11,
        "{lines} log lines for 11 failures on {cpus} CPUs in {:?}\n{}\n{}",
        started.elapsed(),
        m.text,
        agent.log()
    );

    // No agent runs: the programs still report, into the pinned ring. The
    // pause lets the per-CPU rate limit pass, so this one is logged.
    assert!(agent.stop().success(), "{}", agent.log());
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        attempt(&s.sb, Proto::Tcp, denied).ok,
        "still broken, still open"
    );

    // The next agent adopts the maps and the ring: it logs what the
    // programs logged while none ran, and the count goes on.
    let next = s.start(&config);
    assert!(next.log().contains("adopting"), "{}", next.log());
    wait_for_log_line(
        &next,
        &["ERROR", "enforcer::datapath", "internal failure mode_word:"],
        Duration::from_secs(10),
    );
    next.wait_for_metrics(
        "the failure while no agent ran",
        Duration::from_secs(5),
        |m| m.sum("enforcer_datapath_errors_total", &kind) == 12.0,
    );
    // Its start repaired the words it writes: enforced again.
    assert!(attempt(&s.sb, Proto::Tcp, denied).refused());

    // Its own programs log into the same ring.
    let before = datapath_lines(&next.log(), Fault::ModeWord);
    std::thread::sleep(Duration::from_millis(1100));
    break_mode_words(&s.pin_dir);
    assert!(attempt(&s.sb, Proto::Tcp, denied).ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    while datapath_lines(&next.log(), Fault::ModeWord) == before {
        assert!(
            Instant::now() < deadline,
            "the restarted agent's programs logged nothing:\n{}",
            next.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    next.wait_for_metrics(
        "a failure under the new agent",
        Duration::from_secs(5),
        |m| m.sum("enforcer_datapath_errors_total", &kind) == 13.0,
    );
}
