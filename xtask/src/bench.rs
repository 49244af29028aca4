//! `cargo xtask bench`: installs what the benchmark needs (the usual tools
//! plus ipset, iptables and iperf3), fetches the real databases, builds the
//! agent and `ee-bench` in release mode (the agent ships optimised: load
//! times and RSS of a debug build say little), then runs `ee-bench` on the
//! full geo-whois-asn-country database with the EEA approved. It prints one
//! table of medians, puts the results between the `<!-- bench:begin -->`
//! and `<!-- bench:end -->` lines of `docs/benchmarks.md`, and draws
//! `bench/results/latest.png`.
//!
//! The benchmark itself is the `enforcer-bench` crate (`bench/`): it needs
//! the agent library and the tests' sandbox, which xtask must not depend on
//! (see demo.rs). Not part of `xtask test`: it takes minutes and its
//! figures are not pass/fail.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{geoip, setup, test::cargo, workspace, workspace_root};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs per measurement (the table shows their median, min and max).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Random destinations per family per run for the decision cost.
    #[arg(long, default_value_t = 100_000)]
    pub packets: usize,
    /// Only these sections (comma-separated: load, decision, memory,
    /// firewalls, connect, coverage). A partial run writes its table to
    /// `target/bench-partial/` and leaves docs/benchmarks.md alone.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    setup::ensure_bench(&setup::Opts { require_root: true })?;
    let files = geoip::ensure()?;
    cargo(&["build", "--release", "--bins"], &[])?;
    let target = workspace()?.target_dir;
    let bin = target.join("release");
    let (out, page) = if args.only.is_empty() {
        (
            workspace_root().join("bench").join("results"),
            workspace_root().join("docs").join("benchmarks.md"),
        )
    } else {
        let dir = target.join("bench-partial");
        std::fs::create_dir_all(&dir).context("creating target/bench-partial")?;
        let page = dir.join("benchmarks.md");
        std::fs::write(&page, "<!-- bench:begin -->\n<!-- bench:end -->\n")
            .context("writing target/bench-partial/benchmarks.md")?;
        (dir, page)
    };
    let _bpffs = crate::bpffs::Restore::new();
    let status = Command::new(bin.join("ee-bench"))
        .arg("--db")
        .arg(&files.flat_country)
        .arg("--out")
        .arg(&out)
        .arg("--page")
        .arg(&page)
        .args(["--runs", &args.runs.to_string()])
        .args(["--packets", &args.packets.to_string()])
        .args(if args.only.is_empty() {
            Vec::new()
        } else {
            vec!["--only".to_owned(), args.only.join(",")]
        })
        .env("ENFORCER_BIN", bin.join("enforcer"))
        .env("EE_PROBE_BIN", bin.join("ee-probe"))
        .status()
        .context("running ee-bench")?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    Ok(())
}
