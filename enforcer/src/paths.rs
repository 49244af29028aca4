//! Runtime paths, in one place.
//!
//! Defaults for everything the agent creates or reads outside its config:
//! the bpffs pin directory, the config file, the metrics address, and the
//! discovery of the cgroup2 mount from `/proc/self/mountinfo` (it is
//! `/sys/fs/cgroup` on most hosts, `/sys/fs/cgroup/unified` on hybrid ones).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where bpffs is mounted (and where the agent mounts it when it is not).
pub const BPFFS: &str = "/sys/fs/bpf";

/// Default pin directory: maps and links live under `<this>/v<layout>/`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/egress-enforcer";

/// Default runtime directory (tmpfs, so its contents last until reboot,
/// like the bpffs pins): the control socket, runtime mode changes and the
/// reload guard's baseline of the GeoIP data in force.
pub const DEFAULT_RUN_DIR: &str = "/run/egress-enforcer";

/// The control socket's file name in the runtime directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";

/// The runtime mode changes (made with `enforcer mode`) in the runtime
/// directory.
pub const RUNTIME_MODE_NAME: &str = "runtime-mode.json";

/// The reload guard's baseline in the runtime directory: the GeoIP table
/// in force (see [`crate::baseline`]).
pub const BASELINE_TABLE_NAME: &str = "geoip-baseline.table";

/// The baseline's manifest in the runtime directory: the sources and
/// SHA-256s of [`BASELINE_TABLE_NAME`].
pub const BASELINE_MANIFEST_NAME: &str = "geoip-baseline.json";

/// Default audit log (its head file is `<this>.head`).
pub const DEFAULT_AUDIT_LOG: &str = "/var/log/egress-enforcer/audit.jsonl";

/// Default config file used by `--config` when given without a value in
/// service units; `enforcer run` without `--config` uses the embedded default.
pub const DEFAULT_CONFIG: &str = "/etc/egress-enforcer/enforcer.toml";

/// Default Prometheus listen address.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";

/// Where a MaxMind GeoLite2 database is installed by Debian's geoipupdate.
pub const DEFAULT_GEOIP: &str = "/usr/share/GeoIP/GeoLite2-Country.mmdb";

/// Pin sub-directories for one layout version.
#[derive(Clone, Debug)]
pub struct PinLayout {
    /// The configured pin directory (holds one directory per layout version).
    pub root: PathBuf,
    /// `<root>/v<LAYOUT_VERSION>`.
    pub versioned: PathBuf,
    /// `<versioned>/maps`: every map, pinned by name.
    pub maps: PathBuf,
    /// `<versioned>/links`: one bpf_link per (hook, cgroup).
    pub links: PathBuf,
}

impl PinLayout {
    pub fn new(root: &Path) -> Self {
        let versioned = root.join(format!("v{}", enforcer_common::LAYOUT_VERSION));
        Self {
            root: root.to_owned(),
            maps: versioned.join("maps"),
            links: versioned.join("links"),
            versioned,
        }
    }
}

/// The mount point of the cgroup2 hierarchy, from `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    cgroup2_mount_info().map(|m| m.mount_point)
}

/// The cgroup2 mount as mountinfo shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup2Mount {
    /// The cgroup the mount shows at its top, as a path from the cgroup
    /// namespace root (`/` unless a subtree was mounted or bind-mounted,
    /// as some container runtimes do).
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
}

/// The first cgroup2 mount in `/proc/self/mountinfo`, with its root: a
/// cgroup path from `/proc/<pid>/cgroup` is relative to the namespace root,
/// so finding its directory needs both.
pub fn cgroup2_mount_info() -> io::Result<Cgroup2Mount> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    parse_cgroup2_mount(&info).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (see /proc/self/mountinfo)",
        )
    })
}

/// Finds the first cgroup2 mount in mountinfo text: fields are
/// `id parent major:minor root mountpoint options... - fstype source opts`
/// (proc(5)); paths escape spaces and such as `\ooo`.
fn parse_cgroup2_mount(info: &str) -> Option<Cgroup2Mount> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split_whitespace().skip(3);
        let root = fields.next()?;
        let mount_point = fields.next()?;
        Some(Cgroup2Mount {
            root: PathBuf::from(unescape_octal(root)),
            mount_point: PathBuf::from(unescape_octal(mount_point)),
        })
    })
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(v) = octal {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_unified_hosts() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid).map(|m| m.mount_point),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified).map(|m| m.mount_point),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 none rw\n";
        assert_eq!(
            parse_cgroup2_mount(escaped).map(|m| m.mount_point),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            parse_cgroup2_mount("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn keeps_the_root_of_a_mounted_subtree() {
        let container = "900 850 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n";
        assert_eq!(
            parse_cgroup2_mount(container),
            Some(Cgroup2Mount {
                root: PathBuf::from("/docker/abc"),
                mount_point: PathBuf::from("/sys/fs/cgroup"),
            })
        );
    }

    #[test]
    fn pin_layout_is_versioned() {
        let l = PinLayout::new(Path::new("/sys/fs/bpf/x"));
        assert_eq!(
            l.maps,
            PathBuf::from(format!(
                "/sys/fs/bpf/x/v{}/maps",
                enforcer_common::LAYOUT_VERSION
            ))
        );
    }
}
