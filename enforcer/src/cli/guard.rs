//! `enforcer guard`: succeed only when a cgroup (by default the caller's
//! own) is decided by the agent's programs on all five cgroup hooks, as
//! the kernel says now; wait a little for it, then fail. Meant for a
//! service's `ExecStartPre=+/usr/sbin/enforcer guard`, which runs in the
//! service's cgroup before its first process: a service in scope then
//! never starts uncovered (after a boot where the agent failed, or with
//! its slice stopped and started again while the agent was down).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;

use super::{OutputArg, PinDirArg};
use crate::{
    datapath::guard::{self, Cgroup, Coverage},
    paths,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// The cgroup to check: a directory under the cgroup2 mount, or a
    /// cgroup path relative to it (`/residency.slice/db.service`).
    /// Default: this process's own cgroup.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// How long to wait for coverage before failing (e.g. `10s`, `200ms`).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    #[command(flatten)]
    pub output: OutputArg,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let pin_dir = args.pins.resolve();
    let path = match &args.cgroup {
        Some(arg) => {
            let mount = paths::cgroup2_mount().context("finding the cgroup2 mount")?;
            guard::resolve_cgroup(arg, &mount)
        }
        None => guard::own_cgroup()?,
    };
    let cgroup = Cgroup::open(&path)?;
    let coverage = cgroup.wait_covered(&pin_dir, args.wait)?;
    if args.output.json() {
        let mut value = serde_json::to_value(&coverage)?;
        value["covered"] = coverage.covered().into();
        value["pin_dir"] = pin_dir.display().to_string().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if coverage.covered() {
        println!(
            "covered: {} on cgroup {} (id {})",
            coverage
                .hooks
                .iter()
                .map(|h| h.hook)
                .collect::<Vec<_>>()
                .join(" "),
            coverage.cgroup.display(),
            coverage.cgroup_id
        );
    }
    if coverage.covered() {
        return Ok(());
    }
    anyhow::bail!("{}", not_covered(&coverage, &pin_dir, args.wait))
}

/// The failure, with what to do about it.
fn not_covered(coverage: &Coverage, pin_dir: &std::path::Path, wait: Duration) -> String {
    let why = if coverage.installed {
        String::new()
    } else {
        format!(
            " (no link is pinned under {}: the agent has not run since boot, or was uninstalled)",
            paths::PinLayout::new(pin_dir).links.display()
        )
    };
    format!(
        "cgroup {} (id {}) is not covered after {}: no program of the agent is in force there \
         for {}{why}; start egress-enforcer.service (`systemctl start egress-enforcer`), and \
         check that the cgroup is in the agent's scope (is its slice in scope.cgroups?)",
        coverage.cgroup.display(),
        coverage.cgroup_id,
        humantime::format_duration(wait),
        coverage.missing().join(", "),
    )
}
