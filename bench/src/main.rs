//! `ee-bench`: the performance benchmark of issue 5, run by `cargo xtask
//! bench` (which installs the tools, fetches the real database, builds, and
//! passes its path). Measures the real datapath through the agent library
//! (`Datapath::load`, `install`, `program("skb_egress")`) and the real agent
//! binary, so it measures whatever the datapath currently is, side by side
//! with an empty program, a plain LPM trie, nftables and ipset, and writes
//! one table of medians (min, max, ratios) with the machine, the kernel
//! memory per map and how each figure was measured into the generated
//! region of the benchmark page, `docs/benchmarks.md` (see [`page`]), and
//! a PNG chart (`bench/results/latest.png`).
//!
//! It is its own crate (`enforcer-bench`, in `bench/`) so the tests crate
//! keeps only what the tests and the demo need; it depends on that crate
//! (`enforcer-tests`) for the sandbox (namespaces, veth, cgroups, cleanup)
//! and the agent runner the integration tests use. Everything it creates is
//! named `eesb<pid>…` and removed on exit, also on error; `sweep_stale`
//! removes what a killed run left.
//!
//! Usage: `ee-bench --db PATH [--out DIR] [--page FILE] [--runs N]
//! [--packets N] [--only SECTION,...]`.

mod bpf;
mod connect;
mod coverage;
mod decision;
mod events;
mod load;
mod memory;
mod page;
mod report;

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use enforcer_tests::sandbox::{PREFIX, sweep_stale};

use crate::report::{Report, Row};

/// xorshift64*: reproducible random destinations without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

struct Args {
    db: PathBuf,
    out: PathBuf,
    /// The benchmark page whose generated region gets the table.
    page: PathBuf,
    runs: usize,
    packets: usize,
    /// `--only a,b`: run only these sections (for working on one part;
    /// the table then lacks the others). All when empty.
    only: Vec<String>,
}

/// The sections `--only` can name, in the order they run.
const SECTIONS: [&str; 6] = [
    "load",
    "decision",
    "memory",
    "firewalls",
    "connect",
    "coverage",
];

impl Args {
    /// Whether `section` runs.
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

const USAGE: &str = "usage: ee-bench --db PATH [--out DIR] [--page FILE] [--runs N] [--packets N] [--only SECTION,...]";

fn args() -> Result<Args> {
    let mut a = Args {
        db: PathBuf::new(),
        out: PathBuf::from("bench/results"),
        page: PathBuf::from("docs/benchmarks.md"),
        runs: 5,
        packets: 100_000,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--db" => a.db = PathBuf::from(v()?),
            "--out" => a.out = PathBuf::from(v()?),
            "--page" => a.page = PathBuf::from(v()?),
            "--runs" => a.runs = v()?.parse().context("--runs")?,
            "--packets" => a.packets = v()?.parse().context("--packets")?,
            "--only" => {
                for s in v()?.split(',') {
                    if !SECTIONS.contains(&s) {
                        bail!(
                            "--only: unknown section {s:?}; the sections are {}",
                            SECTIONS.join(", ")
                        );
                    }
                    a.only.push(s.to_owned());
                }
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if a.db.as_os_str().is_empty() {
        bail!("{USAGE}");
    }
    Ok(a)
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(connect::LOOP_ARG) {
        return connect::loop_main();
    }
    if std::env::args().nth(1).as_deref() == Some(connect::SERVE_ARG) {
        return connect::serve_main();
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` with this thread pinned to one CPU (test_run timings vary less
/// when the run does not migrate), then restores the affinity.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    use nix::{sched, unistd::Pid};
    let before = sched::sched_getaffinity(Pid::from_raw(0)).ok();
    if let Some(allowed) = before
        && let Some(cpu) = (0..sched::CpuSet::count())
            .rev()
            .find(|&c| allowed.is_set(c).unwrap_or(false))
    {
        let mut one = sched::CpuSet::new();
        if one.set(cpu).is_ok() {
            let _ = sched::sched_setaffinity(Pid::from_raw(0), &one);
        }
    }
    let r = f();
    if let Some(b) = before {
        let _ = sched::sched_setaffinity(Pid::from_raw(0), &b);
    }
    r
}

fn run() -> Result<()> {
    let args = args()?;
    let started = Instant::now();
    sweep_stale();
    let id = format!("{PREFIX}{}x90", std::process::id());
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{id}-"))
        .tempdir()
        .context("scratch directory")?;
    let machine = report::machine();
    println!(
        "ee-bench: {} runs each, database {}\n{machine}",
        args.runs,
        args.db.display()
    );
    let mut rep = Report::default();
    let elapsed = || format!("[{:>4.0}s]", started.elapsed().as_secs_f64());

    let policy = {
        let cfg = load::config(scratch.path(), &args.db, &PathBuf::from("/nonexistent"))?;
        enforcer::policy::CompiledPolicy::compile(&cfg)
            .map_err(|e| anyhow::anyhow!("policy: {e}"))?
    };
    measure_kernel(&args, &id, scratch.path(), &policy, &mut rep, &elapsed)?;

    // (2) connect() rate and (5) the agent's peak RSS.
    if args.wants("connect") {
        println!(
            "{} connect()+close() rate and the agent's peak RSS",
            elapsed()
        );
        match connect::measure(&args.db, &policy, args.runs, &mut rep) {
            Ok(()) => {}
            Err(e) => {
                println!("  connect rate failed: {e:#}");
                rep.not_measured.push(format!(
                    "connect()+close() rate and agent RSS: the run failed: {e:#}"
                ));
            }
        }
    }
    // The window between a scope cgroup's re-creation and its coverage.
    if args.wants("coverage") {
        println!("{} coverage window of a service restart", elapsed());
        if let Err(e) = coverage::measure(&mut rep) {
            println!("  coverage window failed: {e:#}");
            rep.not_measured
                .push(format!("coverage window: the run failed: {e:#}"));
        }
    }
    if !args.only.is_empty() {
        rep.not_measured.push(format!(
            "this run measured only: {} (ee-bench --only)",
            args.only.join(", ")
        ));
    }

    println!("\n{}", rep.table());
    rep.write(&args.out, &args.page, &machine)?;
    println!(
        "{} wrote {} and the results in {}",
        elapsed(),
        args.out.join("latest.png").display(),
        args.page.display()
    );
    Ok(())
}

/// (4) load time, (1) decision cost, (5) map memory.
fn measure_kernel(
    args: &Args,
    id: &str,
    scratch: &std::path::Path,
    policy: &enforcer::policy::CompiledPolicy,
    rep: &mut Report,
    elapsed: &dyn Fn() -> String,
) -> Result<()> {
    // (4) Load time, which also leaves the live datapath for (1) and (5).
    let live = if ["load", "decision", "memory"].iter().any(|s| args.wants(s)) {
        println!(
            "{} load time: the agent's path from .mmdb to live",
            elapsed()
        );
        let (rows, live) = load::enforcer(scratch, &args.db, id, args.runs, &mut rep.notes)?;
        rep.rows.extend(rows);
        Some(live)
    } else {
        None
    };
    if let Some(live) = live {
        measure_live(args, live, rep, elapsed)?;
    }

    // (4) continued: nftables and ipset loading the same prefixes.
    if args.wants("firewalls") {
        println!("{} load time: nft -f and ipset restore", elapsed());
        let ns = load::Netns::new(format!("{id}fw"))?;
        let rows = load::firewalls(scratch, &ns.0, policy, args.runs, &mut rep.notes)?;
        rep.rows.extend(rows);
    }
    Ok(())
}

/// (1) decision cost and (5) map memory, on the datapath the load left.
fn measure_live(
    args: &Args,
    live: load::Live,
    rep: &mut Report,
    elapsed: &dyn Fn() -> String,
) -> Result<()> {
    // (1) Decision cost.
    let progs = if args.wants("decision") || args.wants("memory") {
        println!(
            "{} decision cost: loading the bench object, filling the LPM trie baseline",
            elapsed()
        );
        Some(decision::prepare(&live.pins.0, &live.policy)?)
    } else {
        None
    };
    if let Some(progs) = progs.as_ref().filter(|_| args.wants("decision")) {
        let skb = live
            .dp
            .program("skb_egress")
            .context("skb_egress is not in the datapath")?;
        let skb_fd = skb
            .fd()
            .map_err(|e| anyhow::anyhow!("skb_egress fd: {e}"))?
            .as_fd()
            .as_raw_fd();
        println!(
            "{} decision cost: {} packets per family per run",
            elapsed(),
            args.packets
        );
        let rows = on_one_cpu(|| {
            decision::measure(
                skb_fd,
                progs,
                &live.policy,
                args.runs,
                args.packets,
                &mut rep.notes,
            )
        })?;
        rep.rows.extend(rows);
        rep.notes.push(
            format!("decision: BPF_PROG_TEST_RUN, the kernel's own duration, mean per run, process pinned to one CPU; the decision, LPM and empty programs (bench object, enforcer-ebpf/src/bench.rs: the datapath's own decide() on the agent's maps) walk the random destinations, {} runs per measurement, the empty program's time subtracted; skb_egress first packet: repeat = 1 per packet (a fresh dummy socket each time: decision and counters; socket storage and an event when refused); skb_egress next packet of a flow: repeat = {} on one packet (the per-CPU verdict cache answers an allowed destination, the socket's storage a refused one); both minus an empty program run the same way", decision::REPEAT, decision::REPEAT),
        );
    }

    if args.wants("memory") {
        // (5) Kernel memory of every map: the enforcer's (both slots hold the
        // full table) and the LPM trie baseline's.
        println!("{} kernel memory of every map", elapsed());
        rep.maps = memory::maps();
        let total = |owner: &str| {
            rep.maps
                .iter()
                .filter(|m| m.owner == owner)
                .map(|m| m.bytes)
                .sum::<u64>() as f64
                / 1048576.0
        };
        let mut enf = Row::new("memory", "enforcer: all maps, both slots full", "MiB")
            .vs("LPM trie", "LPM trie baseline: both tries")
            .target("<=", 64.0);
        enf.samples.push(total("enforcer"));
        let mut lpm = Row::new("memory", "LPM trie baseline: both tries", "MiB");
        lpm.samples.push(total("LPM trie baseline"));
        rep.push(enf);
        rep.push(lpm);
    }
    drop(progs);
    drop(live);
    Ok(())
}
