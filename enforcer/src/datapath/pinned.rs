//! Opening pinned objects by path: the one way the agent and the CLI get
//! at a map of an installed datapath without loading it (metrics, events,
//! `status`, `check`), and at a pinned link (to detach it).
//!
//! `BPF_OBJ_GET` is called directly rather than through aya's
//! `MapData::from_pin`, because only the raw call takes the file flags
//! that open a map read-only (`BPF_F_RDONLY`), which `check` uses so that
//! explaining a verdict can never change one.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::maps::{Map, MapData};

use super::{DatapathError, map_err};
use crate::paths::PinLayout;

/// `enum bpf_cmd` value (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;

/// `BPF_OBJ_GET` file flag (include/uapi/linux/bpf.h): the fd may only
/// read the map (lookups), never update or delete.
const BPF_F_RDONLY: u32 = 1 << 3;

/// A zeroed `union bpf_attr` prefix, large enough for the commands used
/// here and in [`super::detach`].
#[repr(C, align(8))]
pub(super) struct Attr(pub [u8; 64]);

impl Attr {
    pub(super) fn zeroed() -> Attr {
        Attr([0; 64])
    }
}

/// The `bpf(2)` system call.
pub(super) fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised buffer of the size passed; the
    // kernel reads (and for some commands writes) within it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens the bpf object pinned at `path` with `BPF_OBJ_GET` file flags.
pub(super) fn obj_get(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
    let mut attr = Attr::zeroed();
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    attr.0[..8].copy_from_slice(&(c_path.as_ptr() as u64).to_ne_bytes());
    attr.0[12..16].copy_from_slice(&file_flags.to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How a pinned map is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Lookups only: the kernel refuses updates through this fd.
    ReadOnly,
}

/// Opens the map `name` of the datapath pinned under `pin_dir`.
///
/// Nothing pinned there: [`DatapathError::NotInstalled`]. Not allowed
/// (not root, or no `CAP_BPF`, or the pin's permissions):
/// [`DatapathError::Permission`], which says so in words instead of the
/// system call's name.
pub fn open_map(pin_dir: &Path, name: &'static str, access: Access) -> Result<Map, DatapathError> {
    open_map_at(
        &PinLayout::new(pin_dir).maps.join(name),
        pin_dir,
        name,
        access,
    )
}

/// Opens the map pinned at `path` (of the datapath pinned under `pin_dir`,
/// named in errors) as the layout's map `name`: [`open_map`], for a pin
/// under another name (a carried map, see [`super::carry`]).
pub(super) fn open_map_at(
    path: &Path,
    pin_dir: &Path,
    name: &'static str,
    access: Access,
) -> Result<Map, DatapathError> {
    let path = path.to_owned();
    let flags = match access {
        Access::ReadWrite => 0,
        Access::ReadOnly => BPF_F_RDONLY,
    };
    let fd = obj_get(&path, flags).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => DatapathError::NotInstalled(pin_dir.to_owned()),
        Some(libc::EACCES | libc::EPERM) => DatapathError::Permission { path: path.clone() },
        _ => DatapathError::Pin {
            path: path.clone(),
            detail: format!("cannot open the pinned map: {e}"),
        },
    })?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    Map::from_map_data(data).map_err(map_err(name))
}
