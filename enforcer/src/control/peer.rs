//! Who is on the other end of the control socket, and may they ask.
//!
//! The kernel records the peer's credentials when it connects:
//! `SO_PEERCRED` gives its uid, gid and pid, `SO_PEERGROUPS` (Linux 4.13)
//! its supplementary groups, both as they were at `connect()` time
//! (https://man7.org/linux/man-pages/man7/unix.7.html). They are read for
//! every connection, and each connection carries one request, so every
//! request is checked.

use std::os::fd::{AsRawFd, RawFd};

use nix::unistd::{Gid, Group};

/// The peer's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCreds {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
    pub groups: Vec<u32>,
}

/// Who may use the socket: root, and members of the admin group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub admin_gid: Option<u32>,
    /// The group as configured, for messages.
    pub admin_group: Option<String>,
}

impl Access {
    /// Resolves `control.admin_group`: a numeric gid is taken as is (a gid
    /// need not have a name), a name must exist in the group database.
    pub fn resolve(admin_group: Option<&str>) -> Result<Access, String> {
        let Some(g) = admin_group else {
            return Ok(Access {
                admin_gid: None,
                admin_group: None,
            });
        };
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match Group::from_name(g) {
                Ok(Some(group)) => group.gid.as_raw(),
                Ok(None) => return Err(format!("control.admin_group {g:?}: no such group")),
                Err(e) => return Err(format!("control.admin_group {g:?}: cannot look it up: {e}")),
            },
        };
        Ok(Access {
            admin_gid: Some(gid),
            admin_group: Some(g.to_owned()),
        })
    }

    /// The socket file's group: the admin group, else root's.
    pub fn socket_gid(&self) -> Gid {
        Gid::from_raw(self.admin_gid.unwrap_or(0))
    }

    /// Ok when the peer may send requests; else why not.
    pub fn check(&self, peer: &PeerCreds) -> Result<(), String> {
        if peer.uid == 0 {
            return Ok(());
        }
        if let Some(admin) = self.admin_gid
            && (peer.gid == admin || peer.groups.contains(&admin))
        {
            return Ok(());
        }
        Err(match &self.admin_group {
            Some(g) => format!(
                "permission denied: uid {} is not root and not in the admin group {g}",
                peer.uid
            ),
            None => format!(
                "permission denied: uid {} is not root (no control.admin_group is configured)",
                peer.uid
            ),
        })
    }
}

/// Reads the peer credentials of a connected unix socket.
pub fn creds(fd: &impl AsRawFd) -> std::io::Result<PeerCreds> {
    let fd = fd.as_raw_fd();
    let (uid, gid, pid) = peercred(fd)?;
    Ok(PeerCreds {
        uid,
        gid,
        pid: (pid > 0).then_some(pid),
        groups: peergroups(fd)?,
    })
}

fn peercred(fd: RawFd) -> std::io::Result<(u32, u32, i32)> {
    // SAFETY: ucred is plain data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: fd is a socket we own; cred and len describe a buffer of
    // exactly that size, valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((cred.uid, cred.gid, cred.pid))
}

fn peergroups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    // NGROUPS_MAX is 65536; start small and grow on ERANGE, which also
    // reports the size needed in `len`.
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes and outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerCreds {
        PeerCreds {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn root_and_admin_members_only() {
        let a = Access::resolve(Some("4242")).expect("numeric gid");
        assert!(a.check(&peer(0, 0, &[])).is_ok());
        assert!(a.check(&peer(1000, 4242, &[])).is_ok(), "primary group");
        assert!(
            a.check(&peer(1000, 100, &[7, 4242])).is_ok(),
            "supplementary"
        );
        let e = a.check(&peer(1000, 100, &[7])).expect_err("not a member");
        assert!(e.contains("uid 1000") && e.contains("4242"), "{e}");
        let none = Access::resolve(None).expect("no group");
        assert!(
            none.check(&peer(1000, 0, &[0])).is_err(),
            "gid 0 is not root"
        );
        let e = Access::resolve(Some("no-such-group-ee")).expect_err("unknown name");
        assert!(
            e.contains("no-such-group-ee") && e.contains("no such group"),
            "{e}"
        );
    }

    #[test]
    fn reads_its_own_credentials_over_a_socketpair() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let c = creds(&a).expect("peer credentials");
        assert_eq!(c.uid, nix::unistd::getuid().as_raw());
        assert_eq!(c.gid, nix::unistd::getgid().as_raw());
        assert_eq!(c.pid, Some(std::process::id() as i32));
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        let mut got = c.groups.clone();
        mine.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, mine);
    }
}
