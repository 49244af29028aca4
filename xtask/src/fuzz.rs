//! `cargo xtask fuzz`: runs the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, the nightly toolchain) and reports per target how many inputs
//! ran, how fast, how large the corpus grew and whether anything crashed.
//! `cargo xtask test` calls [`smoke`]: every target for a few seconds.
//!
//! Everything a run makes lives under `<target-dir>/fuzz/`: the build,
//! `seeds/<target>` (written fresh each run: the mmdb seeds by the geoip
//! example `fuzz_seeds`, the config seeds from the TOML examples of
//! docs/configuration.md, the others from the lists below), `corpus/<target>`
//! (kept between runs, so each run starts where the last one stopped),
//! `artifacts/<target>` (crashing inputs) and `logs/<target>.log`. Nothing
//! binary is committed. docs/fuzzing.md says how to reproduce a crash.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, workspace, workspace_root};

/// The fuzz targets, as named in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["mmdb", "csv", "geofeed", "cloud", "config", "control"];

/// How long `cargo xtask test` runs each target.
pub const SMOKE_SECONDS: u64 = 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Minutes per target.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Only this target (mmdb, csv, geofeed, cloud, config, control);
    /// repeat for several.
    /// Default: all of them.
    #[arg(long = "target", value_name = "NAME")]
    pub targets: Vec<String>,
    /// How many targets run at the same time (each uses one core).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure_fuzz()?;
    for t in &args.targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!(
                "unknown fuzz target {t:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        TARGETS
            .iter()
            .copied()
            .filter(|t| args.targets.iter().any(|a| a == t))
            .collect()
    };
    if args.minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    fuzz(&targets, args.minutes * 60, args.parallel.max(1))
}

/// Every target for [`SMOKE_SECONDS`], one after the other; fails if any
/// crashed. The tools are checked by the caller (`setup::ensure`).
pub fn smoke() -> Result<()> {
    fuzz(TARGETS, SMOKE_SECONDS, 1)
}

/// What one run of one target reported.
#[derive(Debug, Default)]
struct Outcome {
    target: String,
    seconds: f64,
    executions: u64,
    exec_per_sec: u64,
    corpus: usize,
    peak_rss_mb: u64,
    crashed: bool,
    log: PathBuf,
    artifacts: PathBuf,
}

struct Dirs {
    root: PathBuf,
    target_dir: PathBuf,
}

impl Dirs {
    fn seeds(&self, t: &str) -> PathBuf {
        self.root.join("seeds").join(t)
    }
    fn corpus(&self, t: &str) -> PathBuf {
        self.root.join("corpus").join(t)
    }
    fn artifacts(&self, t: &str) -> PathBuf {
        self.root.join("artifacts").join(t)
    }
    fn log(&self, t: &str) -> PathBuf {
        self.root.join("logs").join(format!("{t}.log"))
    }
}

fn fuzz(targets: &[&str], seconds: u64, parallel: usize) -> Result<()> {
    let root = workspace()?.target_dir.join("fuzz");
    let dirs = Dirs {
        target_dir: root.join("build"),
        root,
    };
    write_seeds(&dirs, targets)?;
    build(&dirs)?;

    let mut outcomes = Vec::new();
    for batch in targets.chunks(parallel) {
        let mut running = Vec::new();
        for t in batch {
            println!(
                "\n==> fuzzing {t} for {seconds}s (log: {})",
                dirs.log(t).display()
            );
            running.push((t, Instant::now(), start(&dirs, t, seconds)?));
        }
        for (t, started, mut child) in running {
            let status = child
                .wait()
                .with_context(|| format!("waiting for fuzz target {t}"))?;
            let mut o = read_outcome(&dirs, t)?;
            // libFuzzer's own figure when it printed one; the wall time
            // also counts cargo's up-to-date check (or a rebuild).
            if o.seconds == 0.0 {
                o.seconds = started.elapsed().as_secs_f64();
            }
            o.crashed = !status.success();
            outcomes.push(o);
        }
    }

    println!(
        "\n{:<8} {:>8} {:>14} {:>9} {:>8} {:>8}  result",
        "target", "minutes", "executions", "exec/s", "corpus", "rss MB"
    );
    for o in &outcomes {
        println!(
            "{:<8} {:>8.1} {:>14} {:>9} {:>8} {:>8}  {}",
            o.target,
            o.seconds / 60.0,
            o.executions,
            o.exec_per_sec,
            o.corpus,
            o.peak_rss_mb,
            if o.crashed { "CRASH" } else { "ok" }
        );
    }
    let crashed: Vec<&Outcome> = outcomes.iter().filter(|o| o.crashed).collect();
    if crashed.is_empty() {
        return Ok(());
    }
    for o in &crashed {
        eprintln!(
            "\nfuzz target {} failed; the end of {}:\n{}",
            o.target,
            o.log.display(),
            tail(&o.log, 40)
        );
        eprintln!(
            "the input is in {}; reproduce with `cd fuzz && cargo +nightly fuzz run {} <file>` \
             (docs/fuzzing.md)",
            o.artifacts.display(),
            o.target
        );
    }
    bail!(
        "fuzzing found a failure in: {}",
        crashed
            .iter()
            .map(|o| o.target.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `rustup run nightly cargo fuzz …` in fuzz/, with the stable toolchain's
/// variables removed (xtask runs under the stable cargo, whose `CARGO` and
/// `RUSTC` would otherwise be used by cargo-fuzz and the nightly cargo).
fn cargo_fuzz(dirs: &Dirs, verb: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", setup::NIGHTLY, "cargo", "fuzz", verb])
        .arg("--target-dir")
        .arg(&dirs.target_dir)
        .current_dir(workspace_root().join("fuzz"))
        .env("RUSTUP_AUTO_INSTALL", "0");
    for var in ["CARGO", "RUSTC", "RUSTC_WORKSPACE_WRAPPER", "RUSTDOC"] {
        cmd.env_remove(var);
    }
    cmd
}

fn build(dirs: &Dirs) -> Result<()> {
    let started = Instant::now();
    println!("\n==> cargo +{} fuzz build (all targets)", setup::NIGHTLY);
    let status = cargo_fuzz(dirs, "build")
        .stdin(Stdio::null())
        .status()
        .context("running `cargo fuzz build`")?;
    if !status.success() {
        bail!("`cargo +{} fuzz build` failed ({status})", setup::NIGHTLY);
    }
    println!("==> ok ({:.0}s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn start(dirs: &Dirs, t: &str, seconds: u64) -> Result<Child> {
    let (corpus, artifacts, log) = (dirs.corpus(t), dirs.artifacts(t), dirs.log(t));
    for d in [&corpus, &artifacts] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log fd")?;
    let mut prefix = artifacts.into_os_string();
    prefix.push("/");
    let mut artifact_arg = std::ffi::OsString::from("-artifact_prefix=");
    artifact_arg.push(prefix);
    cargo_fuzz(dirs, "run")
        .arg(t)
        // New inputs go into the first directory; the seeds are read only.
        .arg(&corpus)
        .arg(dirs.seeds(t))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(artifact_arg)
        // One input taking 10 s is a hang; 2 GB is a runaway allocation.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting `cargo fuzz run {t}`"))
}

/// The figures libFuzzer prints at exit (`-print_final_stats=1`) and the
/// corpus size on disk.
fn read_outcome(dirs: &Dirs, t: &str) -> Result<Outcome> {
    let log = dirs.log(t);
    let text = fs::read_to_string(&log).unwrap_or_default();
    let stat = |name: &str| -> u64 {
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    // `Done 3765685 runs in 661 second(s)`
    let seconds = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Done ")?.split(" runs in ").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let corpus = fs::read_dir(dirs.corpus(t))
        .map(|d| d.filter(|e| e.is_ok()).count())
        .unwrap_or(0);
    Ok(Outcome {
        target: t.to_owned(),
        seconds,
        executions: stat("number_of_executed_units"),
        exec_per_sec: stat("average_exec_per_sec"),
        peak_rss_mb: stat("peak_rss_mb"),
        corpus,
        log,
        artifacts: dirs.artifacts(t),
        ..Outcome::default()
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Seeds

/// Small valid and nearly valid CSV sources: both row kinds, header,
/// comments, quoting, IPv4-mapped rows, overlaps.
const CSV_SEEDS: &[&str] = &[
    "network,country\n198.51.100.0/24,DE\n2001:db8::/32,US\n",
    "# overlay\n198.51.100.0/25, de # trailing\n198.51.100.128/25,FR\n",
    "\"1.0.0.0\",\"1.0.0.255\",\"AU\"\n2001:db8:1::,2001:db8:1::ff,NL\n",
    "::ffff:198.51.100.0/120,FR\n::ffff:1.2.3.4,::ffff:1.2.3.5,NL\n",
    "10.0.0.0/8,FR\n10.1.0.0/16,US\n10.1.2.0,10.1.2.9,DE\n::/0,CH\n",
    "0.0.0.0,255.255.255.255,SE\n::,ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff,NO\n",
    "\u{feff}start_ip,end_ip,country\n198.18.0.0,198.19.255.255,GB\n",
    "10.0.0.0/8,UK\n",
];

const GEOFEED_SEEDS: &[&str] = &[
    "# RFC 8805\n198.51.100.0/24,DE,DE-BY,Munich,\n2001:db8::/32,US,US-CA,,\n",
    "198.51.100.0/25,FR,,,\n198.51.100.128/25,,,,\n198.18.0.0/15,XA\n",
    "\u{feff}198.51.100.1/24,DE\n",
    "198.51.100.0/24,DE,FR-75,Paris,75001\n",
    "165.254.252.023,US,US-CA,Los Angeles,\n",
];

/// The first byte picks the provider (0 AWS, 1 Google Cloud, 2 Azure).
const CLOUD_SEEDS: &[&str] = &[
    "\u{0}{\"syncToken\":\"1\",\"createDate\":\"2026-12-07-00-00-00\",\"prefixes\":[\
     {\"ip_prefix\":\"198.51.100.0/24\",\"region\":\"eu-central-1\",\"service\":\"EC2\",\"network_border_group\":\"eu-central-1\"},\
     {\"ip_prefix\":\"198.18.0.0/15\",\"region\":\"GLOBAL\",\"service\":\"CLOUDFRONT\",\"network_border_group\":\"GLOBAL\"}],\
     \"ipv6_prefixes\":[{\"ipv6_prefix\":\"2001:db8::/32\",\"region\":\"us-east-1\",\"service\":\"S3\",\"network_border_group\":\"us-east-1-bue-1\"}]}",
    "\u{1}{\"syncToken\":\"1\",\"creationTime\":\"2026-12-07T00:00:00\",\"prefixes\":[\
     {\"ipv4Prefix\":\"198.51.100.0/24\",\"service\":\"Google Cloud\",\"scope\":\"europe-west3\"},\
     {\"ipv6Prefix\":\"2001:db8::/32\",\"service\":\"Google Cloud\",\"scope\":\"global\"}]}",
    "\u{2}{\"changeNumber\":1,\"cloud\":\"Public\",\"values\":[\
     {\"name\":\"AzureCloud.westeurope\",\"id\":\"AzureCloud.westeurope\",\"properties\":{\"region\":\"westeurope\",\"addressPrefixes\":[\"198.51.100.0/24\"]}},\
     {\"name\":\"AzureFrontDoor.Frontend\",\"id\":\"AzureFrontDoor.Frontend\",\"properties\":{\"region\":\"\",\"addressPrefixes\":[\"198.51.0.0/16\",\"2001:db8::/32\"]}}]}",
    "\u{0}{\"prefixes\":[{\"ip_prefix\":\"300.1.2.3/8\"}]}",
];

/// One request line per verb, and a few near misses.
const CONTROL_SEEDS: &[&str] = &[
    "{\"verb\":\"status\"}\n",
    "{\"verb\":\"reload\"}\n",
    "{\"verb\":\"events\",\"follow\":true}\n",
    "{\"verb\":\"mode\",\"mode\":\"enforce\",\"reason\":\"change 42\"}\n",
    "{\"verb\":\"mode\",\"mode\":\"observe\",\"cgroup\":\"system.slice/minio.service\",\"reason\":\"x\"}\n",
    "{\"verb\":\"check\",\"addresses\":[\"198.51.100.7\",\"2001:db8::1\"],\"cgroup\":\"a/b\"}\n",
    "{\"verb\":\"check\",\"addresses\":[]}",
    "{\"verb\":\"status\",\"x\":1}\n",
];

/// Configs beyond the documented examples: every section, and values at
/// and past their bounds.
const CONFIG_SEEDS: &[&str] = &[
    r#"mode = "enforce"
approved = ["EEA", "!HU", "CH"]
unknown = "deny"
allow = ["198.51.100.0/28", "2001:db8::1"]
deny = ["198.18.0.0/15"]

[[site]]
cidr = "198.51.100.0/24"
country = "DE"
name = "paris-dc"

[geoip]
sources = ["sites.csv", "/usr/share/GeoIP/GeoLite2-Country.mmdb"]
watch = false

[scope]
cgroups = ["system.slice/minio.service"]
interfaces = ["eth0"]

[[scope.override]]
cgroup = "system.slice/minio.service/canary"
mode = "observe"

[events]
rate_per_cpu = 100
burst = 1000
file = "events.jsonl"
stdout = true

[metrics]
listen = "[::1]:9477"

[agent]
pin_dir = "/sys/fs/bpf/egress-enforcer"
run_dir = "/run/egress-enforcer"

[control]
socket = "/run/egress-enforcer/control.sock"
admin_group = "0"

[audit]
file = "/var/log/egress-enforcer/audit.jsonl"
checkpoint_interval = "5m"
"#,
    "approved = [\"EEA\"]\n[geoip]\nsources = [\"a.mmdb\"]\n[scope]\nhost_wide = true\n\
     [audit]\ncheckpoint_interval = \"300000000000y\"\n",
    "approved = []\n[geoip]\nsources = []\n[scope]\ncgroups = [\"../x\"]\n",
];

fn write_seeds(dirs: &Dirs, targets: &[&str]) -> Result<()> {
    for t in targets {
        let dir = dirs.seeds(t);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let texts: Vec<String> = match *t {
            "mmdb" => {
                mmdb_seeds(&dir)?;
                Vec::new()
            }
            "csv" => CSV_SEEDS.iter().map(|s| (*s).to_owned()).collect(),
            "geofeed" => GEOFEED_SEEDS.iter().map(|s| (*s).to_owned()).collect(),
            "cloud" => CLOUD_SEEDS.iter().map(|s| (*s).to_owned()).collect(),
            "control" => CONTROL_SEEDS.iter().map(|s| (*s).to_owned()).collect(),
            "config" => {
                let mut v = documented_configs()?;
                v.extend(CONFIG_SEEDS.iter().map(|s| (*s).to_owned()));
                v
            }
            other => bail!("no seeds for fuzz target {other}"),
        };
        for (i, text) in texts.iter().enumerate() {
            let path = dir.join(format!("seed-{i:02}"));
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The small MaxMind DBs the geoip example `fuzz_seeds` writes (it needs
/// the geoip crate's `writer` feature, which xtask does not depend on).
fn mmdb_seeds(dir: &Path) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--package",
            "geoip",
            "--features",
            "writer",
            "--example",
            "fuzz_seeds",
            "--",
        ])
        .arg(dir)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .status()
        .context("running the geoip example fuzz_seeds")?;
    if !status.success() {
        bail!("writing the mmdb seeds (geoip example fuzz_seeds) failed ({status})");
    }
    Ok(())
}

/// The ```toml blocks of docs/configuration.md: the documented examples,
/// so the seeds follow the docs.
fn documented_configs() -> Result<Vec<String>> {
    let path = workspace_root().join("docs").join("configuration.md");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match current.as_mut() {
            None if line.trim_start().starts_with("```toml") => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_start().starts_with("```") => {
                blocks.extend(current.take());
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    if blocks.is_empty() {
        bail!(
            "{}: no ```toml examples to seed the config target",
            path.display()
        );
    }
    Ok(blocks)
}
