//! Load time: the agent's own path from `.mmdb` on disk to live in the
//! kernel (compile, then install into a policy slot), by stage; a reload
//! that changes 1% of the prefixes; and `nft -f` / `ipset restore` of the
//! same prefixes in a network namespace of our own.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use enforcer::{
    config::Config,
    datapath::Datapath,
    policy::{CompiledPolicy, country_index},
};
use enforcer_common::verdict::APPROVED;
use geoip::CountryCode;

use enforcer_tests::testrun::{PinDir, perturbed};

use crate::report::Row;

const S: &str = "load time";

/// What the last load run leaves for the decision and memory measurements:
/// a datapath whose both slots hold the full database.
pub struct Live {
    pub dp: Datapath,
    pub policy: CompiledPolicy,
    // Dropped after `dp`: the pins go once nothing uses them.
    pub pins: PinDir,
}

/// The config, parsed by the agent's own parser: the real database, the EEA
/// approved, unknown denied, a scope cgroup that is never attached.
pub fn config(dir: &Path, db: &Path, pin_dir: &Path) -> Result<Config> {
    let path = dir.join(format!("bench-{}.toml", std::process::id()));
    fs::write(
        &path,
        format!(
            "mode = \"enforce\"\napproved = [\"EEA\"]\nunknown = \"deny\"\n[geoip]\nsources = [{:?}]\n\
             [scope]\ncgroups = [\"eesb-bench-never-attached\"]\n[agent]\npin_dir = {:?}\n",
            db.display().to_string(),
            pin_dir.display().to_string()
        ),
    )?;
    Config::load(&path).map_err(|e| anyhow::anyhow!("config: {e}"))
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// The agent's load path, `runs` times from scratch (a fresh pin
/// directory each time). Returns the rows and the last run's datapath.
pub fn enforcer(
    dir: &Path,
    db: &Path,
    id: &str,
    runs: usize,
    notes: &mut Vec<String>,
) -> Result<(Vec<Row>, Live)> {
    let mut rows = vec![
        Row::new(S, "enforcer: mmdb -> table (geoip load)", "ms"),
        Row::new(S, "enforcer: compile total (load + layer + rules)", "ms"),
        Row::new(
            S,
            "enforcer: datapath load (programs + maps, verifier)",
            "ms",
        ),
        Row::new(S, "enforcer: install full table into an empty slot", "ms"),
        Row::new(
            S,
            "enforcer: mmdb on disk -> live (compile + install)",
            "ms",
        )
        .vs("nft -f", "nft -f, both families")
        .vs("ipset restore", "ipset restore, both families")
        .target("<=", 1000.0),
        Row::new(
            S,
            "enforcer: reload, 1% of prefixes changed (diff install)",
            "ms",
        )
        .vs(
            "full install",
            "enforcer: install full table into an empty slot",
        )
        .vs("nft -f", "nft -f, both families")
        .target("<=", 50.0),
    ];
    let mut live = None;
    for run in 0..runs {
        // Free the previous run's maps before building the next.
        drop(live.take());
        let pins = PinDir(PathBuf::from(enforcer::paths::BPFFS).join(format!("{id}-load{run}")));
        let config = config(dir, db, &pins.0)?;
        let t = Instant::now();
        let policy =
            CompiledPolicy::compile(&config).map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        let compile = secs(t);
        let geoip: f64 = policy.sources.iter().map(|s| s.load_seconds).sum();
        let t = Instant::now();
        let mut dp =
            Datapath::load(&config.pin_dir).map_err(|e| anyhow::anyhow!("datapath load: {e}"))?;
        let dp_load = secs(t);
        let t = Instant::now();
        dp.install(&policy, config.mode)
            .map_err(|e| anyhow::anyhow!("install: {e}"))?;
        let install = secs(t);
        // Fill the other slot too (the steady state after a reload), then
        // change 1%: that install writes the diff into the slot holding
        // the first table.
        dp.install(&policy, config.mode)
            .map_err(|e| anyhow::anyhow!("second install: {e}"))?;
        let changed = perturbed(&policy.geo);
        let (d4, d6) = policy.geo.diff(&changed);
        let new = CompiledPolicy::from_parts(&config, changed, Vec::new())
            .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        let t = Instant::now();
        let r = dp
            .install(&new, config.mode)
            .map_err(|e| anyhow::anyhow!("1% install: {e}"))?;
        let reload = secs(t);
        println!(
            "  load: 1% reload stages: build {:.1} ms, write {:.1} ms (4 KiB blocks written: IPv4 {}, IPv6 {}), verify {:.1} ms",
            r.geo_build_seconds * 1e3,
            r.geo.write_seconds * 1e3,
            r.geo.v4_blocks,
            r.geo.v6_blocks,
            r.geo_verify_seconds * 1e3
        );
        // Back to the real table in both slots for what follows.
        dp.install(&policy, config.mode)
            .map_err(|e| anyhow::anyhow!("restore install: {e}"))?;
        dp.install(&policy, config.mode)
            .map_err(|e| anyhow::anyhow!("restore install: {e}"))?;
        for (row, v) in
            rows.iter_mut()
                .zip([geoip, compile, dp_load, install, compile + install, reload])
        {
            row.samples.push(v * 1000.0);
        }
        if run == 0 {
            let (n4, n6) = policy.geo_len();
            notes.push(format!(
                "load: {n4} IPv4 and {n6} IPv6 prefixes after the agent's aggregation; the 1% reload changes the country of every 100th prefix: a diff of {} IPv4 and {} IPv6 entries (removed + upserted)",
                d4.len(),
                d6.len()
            ));
        }
        println!(
            "  load: run {}/{runs}: compile {:.0} ms, install {:.0} ms, 1% reload {:.0} ms",
            run + 1,
            compile * 1e3,
            install * 1e3,
            reload * 1e3
        );
        live = Some(Live { dp, policy, pins });
    }
    let live = live.context("no load run")?;
    Ok((rows, live))
}

/// The prefixes a firewall must hold to enforce the same policy: every
/// GeoIP prefix whose country is not approved.
pub fn refused(policy: &CompiledPolicy) -> (Vec<String>, Vec<String>) {
    let refused =
        |c: CountryCode| policy.approval.get(country_index(c) as usize) != Some(&APPROVED);
    (
        policy
            .geo
            .v4
            .prefixes()
            .filter(|(_, c)| refused(*c))
            .map(|(n, _)| n.to_string())
            .collect(),
        policy
            .geo
            .v6
            .prefixes()
            .filter(|(_, c)| refused(*c))
            .map(|(n, _)| n.to_string())
            .collect(),
    )
}

/// An nft ruleset: one interval set per family and an output chain that
/// rejects what is in it (`reject`, so a refused connect() fails at once).
pub fn nft_ruleset(v4: &[String], v6: &[String]) -> String {
    nft_table(
        v4,
        v6,
        "  chain out { type filter hook output priority 0; policy accept;\n    ip daddr @refused4 reject with tcp reset\n    ip6 daddr @refused6 reject with tcp reset\n  }\n",
    )
}

/// The `eebench` table: one interval set per family (`refused4`,
/// `refused6`), then `chains` as given (none: the sets alone).
pub fn nft_table(v4: &[String], v6: &[String], chains: &str) -> String {
    let mut s = String::from("table inet eebench {\n");
    for (name, ty, list) in [("refused4", "ipv4_addr", v4), ("refused6", "ipv6_addr", v6)] {
        // nft rejects an empty `elements = { }`.
        let elements = if list.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }}", list.join(", "))
        };
        let _ = writeln!(s, "  set {name} {{ type {ty}; flags interval;{elements} }}");
    }
    s.push_str(chains);
    s.push_str("}\n");
    s
}

/// `ipset restore` input: one hash:net set per family.
pub fn ipset_restore(v4: &[String], v6: &[String]) -> String {
    let mut s = String::new();
    for (name, family, list) in [("eeb4", "inet", v4), ("eeb6", "inet6", v6)] {
        let _ = writeln!(
            s,
            "create {name} hash:net family {family} hashsize 1048576 maxelem {}",
            (list.len() * 2).max(1024)
        );
        for n in list {
            let _ = writeln!(s, "add {name} {n}");
        }
    }
    s
}

/// Runs `program args` in network namespace `ns` (`ip netns exec`): must
/// succeed. `input`: a file to feed as stdin.
pub fn in_ns(ns: &str, program: &str, args: &[&str], input: Option<&Path>) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, program])
        .args(args)
        .stdout(Stdio::null());
    if let Some(f) = input {
        cmd.stdin(fs::File::open(f).with_context(|| format!("open {}", f.display()))?);
    }
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {ns} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A bare network namespace of our own, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: String) -> Result<Netns> {
        let st = Command::new("ip").args(["netns", "add", &name]).status()?;
        if !st.success() {
            bail!("ip netns add {name} failed");
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// `nft -f` and `ipset restore` of the refused prefixes, per family and
/// together, `runs` times each, in namespace `ns` (emptied between runs).
pub fn firewalls(
    dir: &Path,
    ns: &str,
    policy: &CompiledPolicy,
    runs: usize,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>> {
    let (v4, v6) = refused(policy);
    notes.push(format!(
        "nftables and ipset hold the refused prefixes only ({} IPv4, {} IPv6: every non-EEA prefix), which is what a firewall needs for this policy; the enforcer holds all of them with their countries",
        v4.len(),
        v6.len()
    ));
    let files = [
        ("nft -f, IPv4", nft_ruleset(&v4, &[])),
        ("nft -f, IPv6", nft_ruleset(&[], &v6)),
        ("nft -f, both families", nft_ruleset(&v4, &v6)),
        ("ipset restore, IPv4", ipset_restore(&v4, &[])),
        ("ipset restore, IPv6", ipset_restore(&[], &v6)),
        ("ipset restore, both families", ipset_restore(&v4, &v6)),
    ];
    let mut rows = Vec::new();
    for (i, (name, text)) in files.iter().enumerate() {
        let path = dir.join(format!("fw{i}.txt"));
        fs::write(&path, text)?;
        let mut row = Row::new(S, *name, "ms");
        if name.starts_with("nft") && name.contains("both") {
            row = row.vs("ipset", "ipset restore, both families");
        }
        for run in 0..runs {
            let t = Instant::now();
            if name.starts_with("nft") {
                in_ns(ns, "nft", &["-f", &path.display().to_string()], None)?;
            } else {
                in_ns(ns, "ipset", &["restore"], Some(&path))?;
            }
            row.samples.push(secs(t) * 1000.0);
            // Empty the namespace again (not timed).
            if name.starts_with("nft") {
                in_ns(ns, "nft", &["delete", "table", "inet", "eebench"], None)?;
            } else {
                in_ns(ns, "ipset", &["destroy"], None)?;
            }
            println!(
                "  {name}: run {}/{runs}: {:.0} ms",
                run + 1,
                row.samples[run]
            );
        }
        let _ = fs::remove_file(&path);
        rows.push(row);
    }
    Ok(rows)
}
