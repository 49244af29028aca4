//! Builds the eBPF datapath (`enforcer-ebpf`) with the nightly toolchain
//! through aya-build, so a plain `cargo build` produces a complete agent.
//! The object lands in `$OUT_DIR/enforcer-ebpf` and is embedded by
//! `datapath::OBJECT`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    commit();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let root_of = |name: &str| {
        let package = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == name)
            .ok_or_else(|| anyhow!("{name} package not found in the workspace"))?;
        package
            .manifest_path
            .parent()
            .map(|dir| dir.as_str())
            .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))
    };
    // aya-build watches the datapath's own directory only; the datapath
    // also compiles enforcer-common (its GeoIP lookup among others), and a
    // change there alone must rebuild the object too, or the agent embeds
    // a stale one.
    println!("cargo:rerun-if-changed={}", root_of("enforcer-common")?);
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir: root_of("enforcer-ebpf")?,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}

/// `ENFORCER_COMMIT` for `enforcer --version`: the commit built, or
/// `unknown` outside a git checkout (a source tarball). Rebuilt when HEAD
/// moves. (No `-dirty` mark: it would go stale, since this script does not
/// rerun for every edited file.)
fn commit() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ENFORCER_COMMIT={commit}");
    // HEAD, and the branch file it names, change with every commit.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"])
            .and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        if let Ok(abs) = std::fs::canonicalize(&path) {
            println!("cargo:rerun-if-changed={}", abs.display());
        }
    }
}
