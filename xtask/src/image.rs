//! `cargo xtask image`: the agent's container image, built from
//! packaging/container/Containerfile with buildah (daemonless, from
//! Debian), then run.
//!
//! 1. The package: `cargo xtask deb`'s, or the `.deb` given with `--deb`.
//! 2. The base: `--base` (Debian 12 slim) when it is in buildah's storage
//!    or can be pulled; else a minimal Debian 12 made from Debian's
//!    packages with mmdebstrap (`--variant=minbase`, documentation left
//!    out as the slim images do), committed once as [`LOCAL_BASE`]. The
//!    build says which it used.
//! 3. `buildah build --isolation chroot`: the RUN step (apt installing the
//!    `.deb`) needs no OCI runtime and uses the host's network for apt.
//! 4. The image is run with runc: `enforcer --version` must name this
//!    version, and `enforcer config check` must pass on the Kubernetes
//!    ConfigMap's config with the cached GeoLite2 database mounted where
//!    the DaemonSet mounts the node's.
//! 5. It is written as an OCI archive (`target/container/*.oci.tar`) for
//!    `ctr images import`, `kind load image-archive` or `skopeo copy`;
//!    the path is the last line printed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{deb, geoip, setup, workspace, workspace_root};

/// The base made with mmdebstrap when `--base` cannot be had.
const LOCAL_BASE: &str = "localhost/egress-enforcer-base:bookworm";

/// What slim Debian images leave out, as dpkg path excludes (the
/// copyright files stay).
const SLIM_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Install this .deb instead of building one with `cargo xtask deb`.
    #[arg(long, value_name = "PATH")]
    pub deb: Option<PathBuf>,
    /// The base image: Debian 12. When it cannot be pulled, a minimal
    /// Debian 12 is made from Debian's packages with mmdebstrap instead.
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = "docker.io/library/debian:bookworm-slim"
    )]
    pub base: String,
    /// The image's name (default: localhost/egress-enforcer:<version>).
    #[arg(long, value_name = "NAME:TAG")]
    pub tag: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    setup::ensure_image()?;
    let ws = workspace()?;
    let deb = match &args.deb {
        Some(p) => {
            if !p.is_file() {
                bail!("--deb {}: no such file", p.display());
            }
            p.clone()
        }
        None => deb::build(&deb::Args {
            binary: None,
            version: None,
            out: None,
        })?,
    };
    let deb_name = deb
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no UTF-8 file name", deb.display()))?
        .to_owned();
    let tag = args
        .tag
        .clone()
        .unwrap_or_else(|| format!("localhost/egress-enforcer:{}", ws.version));

    let base = ensure_base(&args.base)?;

    // The build context: the Containerfile and the package, nothing else.
    let out_dir = ws.target_dir.join("container");
    let context = out_dir.join("context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let containerfile = workspace_root().join("packaging/container/Containerfile");
    fs::copy(&containerfile, context.join("Containerfile"))
        .with_context(|| format!("copying {}", containerfile.display()))?;
    fs::copy(&deb, context.join(&deb_name))
        .with_context(|| format!("copying {}", deb.display()))?;

    // A rebuild leaves the previous image untagged: removed below.
    let previous = image_id(&tag);
    println!("\n==> buildah build {tag} (base {base}, {deb_name})");
    let status = Command::new("buildah")
        .args([
            "build",
            "--isolation",
            "chroot",
            "--pull=never",
            "--layers=false",
        ])
        .args(["--build-arg", &format!("BASE={base}")])
        .args(["--build-arg", &format!("DEB={deb_name}")])
        .args(["-f", "Containerfile", "-t", &tag, "."])
        .current_dir(&context)
        .stdin(Stdio::null())
        .status()
        .context("running buildah build")?;
    if !status.success() {
        bail!("`buildah build` failed ({status}); see its output above");
    }

    if let Some(old) = previous.filter(|old| image_id(&tag).as_ref() != Some(old)) {
        let _ = Command::new("buildah")
            .args(["rmi", &old])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    check_image(&tag, &ws.version)?;

    let archive = out_dir.join(format!(
        "egress-enforcer_{}.oci.tar",
        tag.rsplit_once(':').map_or(ws.version.as_str(), |(_, t)| t)
    ));
    let _ = fs::remove_file(&archive);
    run_ok(Command::new("buildah").args([
        "push",
        "--quiet",
        &tag,
        &format!("oci-archive:{}:{tag}", archive.display()),
    ]))?;
    let size = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    println!(
        "==> ok ({:.0}s): {tag}, OCI archive {:.1} MiB",
        started.elapsed().as_secs_f64(),
        size as f64 / (1024.0 * 1024.0)
    );
    println!("{}", archive.display());
    Ok(())
}

/// The base image to build on: `wanted` if buildah has it or can pull it,
/// else [`LOCAL_BASE`], made with mmdebstrap when missing.
fn ensure_base(wanted: &str) -> Result<String> {
    if have_image(wanted) {
        return Ok(wanted.to_owned());
    }
    println!("\n==> buildah pull {wanted}");
    let pulled = Command::new("buildah")
        .args(["pull", "--quiet", wanted])
        .stdin(Stdio::null())
        .output()
        .context("running buildah pull")?;
    if pulled.status.success() {
        return Ok(wanted.to_owned());
    }
    println!(
        "note: cannot pull {wanted} ({}); building on a minimal Debian 12 made with \
         mmdebstrap from Debian's packages instead ({LOCAL_BASE})",
        first_line(&pulled.stderr)
    );
    if have_image(LOCAL_BASE) {
        return Ok(LOCAL_BASE.to_owned());
    }
    let started = Instant::now();
    let scratch = tempfile_dir("egress-enforcer-base")?;
    let tar = scratch.join("rootfs.tar");
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--variant=minbase", "--quiet"]);
    for exclude in SLIM_EXCLUDES {
        cmd.arg(format!("--dpkgopt={exclude}"));
    }
    cmd.arg("bookworm").arg(&tar);
    let made = run_ok(&mut cmd);
    let result = made.and_then(|_| commit_rootfs(&tar));
    let _ = fs::remove_dir_all(&scratch);
    result?;
    println!(
        "==> ok ({:.0}s): {LOCAL_BASE}",
        started.elapsed().as_secs_f64()
    );
    Ok(LOCAL_BASE.to_owned())
}

/// A working container from scratch with `tar` unpacked into it, committed
/// as [`LOCAL_BASE`]; the container is removed whatever happens.
fn commit_rootfs(tar: &Path) -> Result<()> {
    let ctr = Container::from("scratch")?;
    let mount =
        String::from_utf8_lossy(&run_ok(Command::new("buildah").args(["mount", &ctr.0]))?.stdout)
            .trim()
            .to_owned();
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&mount)
            .arg("-xf")
            .arg(tar),
    )?;
    run_ok(Command::new("buildah").args(["umount", &ctr.0]))?;
    run_ok(Command::new("buildah").args(["config", "--cmd", "/bin/bash", &ctr.0]))?;
    run_ok(Command::new("buildah").args(["commit", "--quiet", &ctr.0, LOCAL_BASE]))?;
    Ok(())
}

/// Runs the image: its entrypoint reports this version, and `config
/// check` passes on the Kubernetes ConfigMap's config.
fn check_image(tag: &str, version: &str) -> Result<()> {
    // The whole inspection, as JSON: Debian 12's buildah (1.28) has no
    // `json` function for --format.
    let inspect = run_ok(Command::new("buildah").args(["inspect", "--type", "image", tag]))?;
    let inspect: serde_json::Value =
        serde_json::from_slice(&inspect.stdout).context("parsing `buildah inspect`")?;
    let entrypoint: Vec<String> = inspect
        .pointer("/OCIv1/config/Entrypoint")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_default();
    if entrypoint.is_empty() {
        bail!("image {tag} has no entrypoint");
    }

    let ctr = Container::from(tag)?;
    let mut cmd = ctr.run(&[]);
    cmd.args(&entrypoint).arg("--version");
    let out = run_ok(&mut cmd)?;
    let shown = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("image: {shown}");
    if !shown.starts_with(&format!("enforcer {version} ")) {
        bail!("the image's agent reports {shown:?}, not version {version}");
    }

    // The DaemonSet's config, with the node's database directory mounted
    // from the cache, as the DaemonSet mounts the node's.
    let configmap = workspace_root().join("packaging/kubernetes/configmap.yaml");
    let yaml = fs::read_to_string(&configmap)
        .with_context(|| format!("reading {}", configmap.display()))?;
    let toml = configmap_toml(&yaml)
        .with_context(|| format!("{}: no `enforcer.toml: |` block", configmap.display()))?;
    let dir = tempfile_dir("egress-enforcer-image-config")?;
    let result = (|| {
        fs::write(dir.join("enforcer.toml"), toml).context("writing the config")?;
        let files = geoip::ensure()?;
        // The host's cgroup2 hierarchy in place of the container's view,
        // as the DaemonSet mounts it (here the container may have no
        // cgroup2 mount at all: runc on a hybrid host mounts v1 only).
        let cgroup2 = host_cgroup2()?;
        let mut cmd = ctr.run(&[
            (&dir, "/etc/egress-enforcer"),
            (&files.dir, "/usr/share/GeoIP"),
            (&cgroup2, "/sys/fs/cgroup"),
        ]);
        cmd.args(&entrypoint).args([
            "config",
            "check",
            "--config",
            "/etc/egress-enforcer/enforcer.toml",
        ]);
        let out = run_ok(&mut cmd)?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&dir);
    result.context("`enforcer config check` in the image on the ConfigMap's config")
}

/// Where this host mounts cgroup2, from `/proc/self/mountinfo`
/// (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
fn host_cgroup2() -> Result<PathBuf> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 file system is mounted on this host (see /proc/self/mountinfo)")
}

/// The text of the `enforcer.toml: |` block scalar in the ConfigMap: the
/// lines after the key that are blank or indented deeper than it.
fn configmap_toml(yaml: &str) -> Option<String> {
    let mut lines = yaml.lines();
    let key = lines.by_ref().find(|l| l.trim() == "enforcer.toml: |")?;
    let key_indent = key.len() - key.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()?;
    let mut text: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    while text.ends_with("\n\n") {
        text.pop();
    }
    Some(text)
}

/// A buildah working container, removed on drop.
struct Container(String);

impl Container {
    fn from(image: &str) -> Result<Self> {
        let out = run_ok(Command::new("buildah").args(["from", "--pull=never", "--quiet", image]))?;
        Ok(Self(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }

    /// `buildah run` with runc and these read-only bind mounts; the
    /// command follows. `--network none`: the checks need no network, and
    /// buildah's default private network would have CNI create a bridge
    /// (`cni-podman0`), a route and iptables chains in the host's network
    /// namespace, which nothing here may touch.
    fn run(&self, mounts: &[(&Path, &str)]) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.args(["run", "--runtime", "runc", "--network", "none"]);
        for (from, to) in mounts {
            cmd.arg("-v").arg(format!("{}:{to}:ro", from.display()));
        }
        cmd.arg(&self.0).arg("--");
        cmd
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("buildah")
            .args(["rm", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The ID of image `name`, if buildah has it.
fn image_id(name: &str) -> Option<String> {
    let out = Command::new("buildah")
        .args([
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.FromImageID}}",
            name,
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !id.is_empty()).then_some(id)
}

fn have_image(name: &str) -> bool {
    Command::new("buildah")
        .args(["inspect", "--type", "image", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh directory under the temp dir, named after this process.
fn tempfile_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_owned()
}

/// Runs `cmd` with captured output; fails naming the command and its
/// stderr.
fn run_ok(cmd: &mut Command) -> Result<Output> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_configmap_block() {
        let yaml = "data:\n  enforcer.toml: |\n    # c\n    mode = \"observe\"\n\n    [scope]\n      x = 1\n\nkind: ConfigMap\n";
        assert_eq!(
            configmap_toml(yaml).as_deref(),
            Some("# c\nmode = \"observe\"\n\n[scope]\n  x = 1\n")
        );
        assert_eq!(configmap_toml("data:\n  other: |\n    x\n"), None);
    }

    #[test]
    fn the_shipped_configmap_has_a_config() {
        let path = workspace_root().join("packaging/kubernetes/configmap.yaml");
        let yaml = fs::read_to_string(path).expect("configmap.yaml");
        let toml = configmap_toml(&yaml).expect("the block");
        assert!(toml.starts_with("# Observe first"), "{toml}");
        assert!(toml.contains("\n[audit]\n"), "{toml}");
        assert!(!toml.contains("\n  "), "indentation left over: {toml}");
    }
}
