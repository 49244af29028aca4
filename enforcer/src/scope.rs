//! Resolving the configured scope to what the programs attach to: cgroup2
//! directories, and network interfaces for forwarded traffic.
//!
//! Every target is opened (and checked to be a cgroup2 directory) or
//! looked up (an Ethernet interface in the agent's network namespace)
//! before anything is attached. One that is wrong (not a cgroup2
//! directory, not Ethernet, nested in another) fails the whole load; one
//! that does not exist *yet* is not an error: a scoped service may be
//! stopped, or not started at boot before the agent. It is reported as
//! absent, and the agent covers it the moment it appears (see
//! `agent::coverage`).

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

use enforcer_common::Mode;

use crate::{
    config::{ModeOverride, Scope},
    paths,
};

/// An attach target.
#[derive(Debug)]
pub struct CgroupTarget {
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
    /// The open directory (what the kernel attaches to).
    pub dir: File,
    /// The cgroup id (its cgroup2 inode number), as `bpf_get_current_cgroup_id()` and
    /// bpf_link_info report it.
    pub id: u64,
}

/// An error resolving the scope.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("cannot find the cgroup2 mount: {0}")]
    Mount(io::Error),
    #[error("scope cgroup {path}: {message}")]
    Cgroup { path: PathBuf, message: String },
    #[error("interface {name:?}: {message}")]
    Interface { name: String, message: String },
}

/// A network interface whose egress the tcx program decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceTarget {
    pub name: String,
    /// Its index in the agent's network namespace when it was resolved.
    pub ifindex: u32,
}

/// `ARPHRD_ETHER` (include/uapi/linux/if_arphdr.h): the link types with a
/// 14-byte Ethernet header (veth, bridges, bonds, VLAN devices, macvlan,
/// VXLAN, physical NICs).
const ARPHRD_ETHER: u16 = 1;

/// Looks up every interface by name in the agent's network namespace (the
/// namespace it runs in: interface names are per namespace) and checks it
/// is Ethernet, since the tcx program finds the IP header after an
/// Ethernet header: on a device without one (WireGuard, tun, IP tunnels,
/// loopback) it would read the wrong bytes and decide nothing.
/// Names that do not exist (yet) are returned apart, in config order.
pub fn resolve_interfaces(
    names: &[String],
) -> Result<(Vec<InterfaceTarget>, Vec<String>), ScopeError> {
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for name in names {
        match resolve_interface_if_present(name)? {
            Some(t) => present.push(t),
            None => absent.push(name.clone()),
        }
    }
    Ok((present, absent))
}

/// One interface: its index, and a check that it is Ethernet.
pub fn resolve_interface(name: &str) -> Result<InterfaceTarget, ScopeError> {
    resolve_interface_if_present(name)?.ok_or_else(|| ScopeError::Interface {
        name: name.to_owned(),
        message: "no such interface in the agent's network namespace".to_owned(),
    })
}

/// [`resolve_interface`], with `None` for a name that no interface has.
pub fn resolve_interface_if_present(name: &str) -> Result<Option<InterfaceTarget>, ScopeError> {
    let err = |message: String| ScopeError::Interface {
        name: name.to_owned(),
        message,
    };
    let ifindex = match nix::net::if_::if_nametoindex(name) {
        Ok(i) => i,
        Err(nix::errno::Errno::ENODEV) => return Ok(None),
        Err(e) => return Err(err(format!("cannot look it up: {e}"))),
    };
    match link_type(name) {
        Ok(ARPHRD_ETHER) => {}
        Ok(other) => {
            return Err(err(format!(
                "link type {other} is not Ethernet (ARPHRD_ETHER); forwarded traffic is \
                 decided on Ethernet interfaces only (see docs/operator-guide.md, \
                 \"Forwarded traffic\")"
            )));
        }
        // Deleted between the two calls: absent.
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => return Ok(None),
        Err(e) => return Err(err(format!("cannot read its link type: {e}"))),
    }
    Ok(Some(InterfaceTarget {
        name: name.to_owned(),
        ifindex,
    }))
}

/// The interface's link type (`ARPHRD_*`), from SIOCGIFHWADDR on a socket
/// of the agent's own network namespace (sysfs may show another one).
fn link_type(name: &str) -> io::Result<u16> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd as _;

    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the NUL-terminated name in `req` and
    // writes its hardware address into it; `req` outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// The scope's cgroups as they are now.
#[derive(Debug, Default)]
pub struct ResolvedScope {
    /// The cgroups that exist, opened.
    pub present: Vec<CgroupTarget>,
    /// Configured cgroups that do not exist (yet), as absolute paths.
    pub absent: Vec<PathBuf>,
}

/// Opens every cgroup of the scope that exists.
pub fn resolve(scope: &Scope) -> Result<ResolvedScope, ScopeError> {
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    resolve_under(&mount, scope)
}

/// The absolute paths of the scope's cgroups, as configured (host-wide:
/// the mount itself).
pub fn configured_paths(mount: &Path, scope: &Scope) -> Vec<PathBuf> {
    match scope {
        Scope::HostWide => vec![mount.to_owned()],
        Scope::Cgroups(list) => list.iter().map(|p| absolute(mount, p)).collect(),
    }
}

/// A resolved per-cgroup mode override.
#[derive(Debug)]
pub struct ResolvedOverride {
    pub target: CgroupTarget,
    pub mode: Mode,
}

/// Opens the cgroup of every override and checks that it is inside the
/// scope: the datapath never runs outside it, so an override there would
/// silently do nothing. One whose cgroup does not exist is an error.
pub fn resolve_overrides(
    scope: &Scope,
    overrides: &[ModeOverride],
) -> Result<Vec<ResolvedOverride>, ScopeError> {
    let (present, absent) = resolve_present_overrides(scope, overrides)?;
    match absent.into_iter().next() {
        Some(path) => Err(ScopeError::Cgroup {
            path,
            message: "cannot open: no such cgroup".into(),
        }),
        None => Ok(present),
    }
}

/// [`resolve_overrides`], returning the overrides whose cgroup does not
/// exist (yet) apart instead of failing: like a scope cgroup, an override's
/// service may be stopped. Its override applies once it exists (the
/// coverage loop resolves them again).
pub fn resolve_present_overrides(
    scope: &Scope,
    overrides: &[ModeOverride],
) -> Result<(Vec<ResolvedOverride>, Vec<PathBuf>), ScopeError> {
    if overrides.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    let roots: Vec<PathBuf> = configured_paths(&mount, scope)
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    let mut present = Vec::new();
    let mut absent = Vec::new();
    for o in overrides {
        let path = absolute(&mount, &o.cgroup);
        let Some(target) = open(&mount, path.clone())? else {
            if !roots.iter().any(|r| path.starts_with(r)) {
                return Err(ScopeError::Cgroup {
                    path,
                    message: "has a mode override but is not inside the scope (scope.cgroups)"
                        .into(),
                });
            }
            absent.push(path);
            continue;
        };
        if !roots.iter().any(|r| target.path.starts_with(r)) {
            return Err(ScopeError::Cgroup {
                path: target.path,
                message: "has a mode override but is not inside the scope (scope.cgroups)".into(),
            });
        }
        present.push(ResolvedOverride {
            target,
            mode: o.mode,
        });
    }
    Ok((present, absent))
}

pub fn absolute(mount: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        mount.join(p)
    }
}

/// Like [`resolve`] with a known cgroup2 mount point.
pub fn resolve_under(mount: &Path, scope: &Scope) -> Result<ResolvedScope, ScopeError> {
    let mut resolved = ResolvedScope::default();
    for path in configured_paths(mount, scope) {
        match open(mount, path.clone())? {
            Some(t) => resolved.present.push(t),
            None => resolved.absent.push(path),
        }
    }
    check_disjoint(&resolved.present)?;
    check_disjoint_absent(&resolved)?;
    Ok(resolved)
}

/// [`check_disjoint`] for the cgroups that do not exist yet, by their
/// configured paths: they cannot be canonicalized, and one that will be
/// created inside another entry must be refused now, not when it appears.
fn check_disjoint_absent(r: &ResolvedScope) -> Result<(), ScopeError> {
    let present = r.present.iter().map(|t| t.path.as_path());
    let all: Vec<&Path> = present
        .chain(r.absent.iter().map(PathBuf::as_path))
        .collect();
    for a in &r.absent {
        for b in &all {
            if std::ptr::eq(*b, a.as_path()) {
                continue;
            }
            let message = if a == b {
                "is listed twice in scope.cgroups".to_owned()
            } else if a.starts_with(b) {
                format!(
                    "is inside scope cgroup {}, which already covers it; list only the outer one",
                    b.display()
                )
            } else if b.starts_with(a) {
                format!(
                    "contains scope cgroup {}, which it would already cover; list only the outer one",
                    b.display()
                )
            } else {
                continue;
            };
            return Err(ScopeError::Cgroup {
                path: a.clone(),
                message,
            });
        }
    }
    Ok(())
}

/// Opens one cgroup by path now (the coverage loop's look at an entry):
/// `None` while it does not exist.
pub fn open_cgroup(path: &Path) -> Result<Option<CgroupTarget>, ScopeError> {
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    open(&mount, path.to_owned())
}

/// Refuses a scope that lists one cgroup twice or one inside another: the
/// programs of both would run for the inner cgroup's sockets (cgroup
/// programs of ancestors run too), so every connection there would be
/// decided, counted and reported twice.
fn check_disjoint(targets: &[CgroupTarget]) -> Result<(), ScopeError> {
    for (i, a) in targets.iter().enumerate() {
        for b in &targets[..i] {
            let message = if a.id == b.id {
                format!(
                    "is listed twice in scope.cgroups (same cgroup as {})",
                    b.path.display()
                )
            } else if a.path.starts_with(&b.path) {
                format!(
                    "is inside scope cgroup {}, which already covers it; list only the outer one",
                    b.path.display()
                )
            } else if b.path.starts_with(&a.path) {
                format!(
                    "contains scope cgroup {}, which it already covers; list only the outer one",
                    b.path.display()
                )
            } else {
                continue;
            };
            return Err(ScopeError::Cgroup {
                path: a.path.clone(),
                message,
            });
        }
    }
    Ok(())
}

/// Opens a cgroup directory; `None` when it (or a parent) does not exist.
fn open(mount: &Path, path: PathBuf) -> Result<Option<CgroupTarget>, ScopeError> {
    let err = |message: String| ScopeError::Cgroup {
        path: path.clone(),
        message,
    };
    // Resolve `..` and symbolic links first, so that the checks below (and
    // the nesting check) see the cgroup's real place in the hierarchy.
    let path = match std::fs::canonicalize(&path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot open: {e}"))),
    };
    let err = |message: String| ScopeError::Cgroup {
        path: path.clone(),
        message,
    };
    if !path.starts_with(mount) {
        return Err(err(format!(
            "not under the cgroup2 mount {}",
            mount.display()
        )));
    }
    let dir = match File::open(&path) {
        Ok(d) => d,
        // Removed since it was canonicalized.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot open: {e}"))),
    };
    let meta = dir.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    match statfs(&path) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => return Err(err("not on a cgroup2 file system".into())),
        Err(e) => return Err(err(format!("statfs: {e}"))),
    }
    Ok(Some(CgroupTarget {
        id: meta.ino(),
        path,
        dir,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_is_absent_not_an_error() {
        let (present, absent) =
            resolve_interfaces(&["eesb-no-such".into()]).expect("absent is not an error");
        assert!(present.is_empty());
        assert_eq!(absent, ["eesb-no-such"]);
        let e = resolve_interface("eesb-no-such")
            .expect_err("no such interface")
            .to_string();
        assert!(
            e.contains("\"eesb-no-such\"") && e.contains("no such interface"),
            "{e}"
        );
    }

    #[test]
    fn loopback_is_not_ethernet() {
        let e = resolve_interface("lo")
            .expect_err("loopback has no Ethernet header")
            .to_string();
        assert!(e.contains("\"lo\"") && e.contains("not Ethernet"), "{e}");
    }
}
