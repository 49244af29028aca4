//! Resolving the configured scope to what the programs attach to: cgroup2
//! directories, and network interfaces for forwarded traffic.
//!
//! Every target is opened (and checked to be a cgroup2 directory) or
//! looked up (an Ethernet interface in the agent's network namespace)
//! before anything is attached, so a missing cgroup or interface fails the
//! whole attach instead of leaving half the scope enforced.

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
pub fn resolve_interfaces(names: &[String]) -> Result<Vec<InterfaceTarget>, ScopeError> {
    names.iter().map(|name| resolve_interface(name)).collect()
}

/// One interface: its index, and a check that it is Ethernet.
pub fn resolve_interface(name: &str) -> Result<InterfaceTarget, ScopeError> {
    let err = |message: String| ScopeError::Interface {
        name: name.to_owned(),
        message,
    };
    let ifindex = nix::net::if_::if_nametoindex(name).map_err(|e| {
        err(match e {
            nix::errno::Errno::ENODEV => {
                "no such interface in the agent's network namespace".to_owned()
            }
            e => format!("cannot look it up: {e}"),
        })
    })?;
    match link_type(name) {
        Ok(ARPHRD_ETHER) => {}
        Ok(other) => {
            return Err(err(format!(
                "link type {other} is not Ethernet (ARPHRD_ETHER); forwarded traffic is \
                 decided on Ethernet interfaces only (see docs/operator-guide.md, \
                 \"Forwarded traffic\")"
            )));
        }
        Err(e) => return Err(err(format!("cannot read its link type: {e}"))),
    }
    Ok(InterfaceTarget {
        name: name.to_owned(),
        ifindex,
    })
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

/// Opens every cgroup of the scope.
pub fn resolve(scope: &Scope) -> Result<Vec<CgroupTarget>, ScopeError> {
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    resolve_under(&mount, scope)
}

/// A resolved per-cgroup mode override.
#[derive(Debug)]
pub struct ResolvedOverride {
    pub target: CgroupTarget,
    pub mode: Mode,
}

/// Opens the cgroup of every override and checks that it is inside the
/// scope: the datapath never runs outside it, so an override there would
/// silently do nothing.
pub fn resolve_overrides(
    scope: &Scope,
    overrides: &[ModeOverride],
) -> Result<Vec<ResolvedOverride>, ScopeError> {
    if overrides.is_empty() {
        return Ok(Vec::new());
    }
    let mount = paths::cgroup2_mount().map_err(ScopeError::Mount)?;
    let roots: Vec<PathBuf> = match scope {
        Scope::HostWide => vec![mount.clone()],
        Scope::Cgroups(list) => list
            .iter()
            .map(|p| {
                let p = absolute(&mount, p);
                std::fs::canonicalize(&p).unwrap_or(p)
            })
            .collect(),
    };
    overrides
        .iter()
        .map(|o| {
            let target = open(&mount, absolute(&mount, &o.cgroup))?;
            if !roots.iter().any(|r| target.path.starts_with(r)) {
                return Err(ScopeError::Cgroup {
                    path: target.path,
                    message: "has a mode override but is not inside the scope (scope.cgroups)"
                        .into(),
                });
            }
            Ok(ResolvedOverride {
                target,
                mode: o.mode,
            })
        })
        .collect()
}

pub fn absolute(mount: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        mount.join(p)
    }
}

/// Like [`resolve`] with a known cgroup2 mount point.
pub fn resolve_under(mount: &Path, scope: &Scope) -> Result<Vec<CgroupTarget>, ScopeError> {
    let paths: Vec<PathBuf> = match scope {
        Scope::HostWide => vec![mount.to_owned()],
        Scope::Cgroups(list) => list.iter().map(|p| absolute(mount, p)).collect(),
    };
    let targets = paths
        .into_iter()
        .map(|p| open(mount, p))
        .collect::<Result<Vec<_>, _>>()?;
    check_disjoint(&targets)?;
    Ok(targets)
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

fn open(mount: &Path, path: PathBuf) -> Result<CgroupTarget, ScopeError> {
    let err = |message: String| ScopeError::Cgroup {
        path: path.clone(),
        message,
    };
    // Resolve `..` and symbolic links first, so that the checks below (and
    // the nesting check) see the cgroup's real place in the hierarchy.
    let path = std::fs::canonicalize(&path).map_err(|e| err(format!("cannot open: {e}")))?;
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
    let dir = File::open(&path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = dir.metadata().map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".into()));
    }
    match statfs(&path) {
        Ok(s) if s.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => return Err(err("not on a cgroup2 file system".into())),
        Err(e) => return Err(err(format!("statfs: {e}"))),
    }
    Ok(CgroupTarget {
        id: meta.ino(),
        path,
        dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interface_is_named() {
        let e = resolve_interfaces(&["eesb-no-such".into()])
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
