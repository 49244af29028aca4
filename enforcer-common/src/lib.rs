//! Types shared by the kernel datapath (`enforcer-ebpf`) and the agent (`enforcer`).
//!
//! Everything that crosses the user/kernel boundary lives here: map names, map
//! layouts and their version, the country index, and the `#[repr(C)]` keys and
//! values; and the GeoIP table lookup ([`lookup`]), which both sides run, so
//! the agent's reading of the tables is the kernel's. The rules for these types:
//!
//! - `#[repr(C)]`, no `bool`, no implicit padding (checked by `const` asserts),
//!   so both sides agree byte for byte and the verifier never sees
//!   uninitialised stack bytes;
//! - enums travel as raw `u32` and are decoded with `from_raw`, because a map
//!   value is never trusted to hold a valid discriminant;
//! - the `user` feature adds `aya::Pod` so the agent can use them in maps.
// Tests use std (Vec, collections) for their hand-built tables.
#![cfg_attr(not(test), no_std)]

pub mod bench;
pub mod country;
pub mod layout;
pub mod lookup;
pub mod verdict;

pub use country::{COUNTRY_SLOTS, UNKNOWN_COUNTRY};
pub use layout::*;
pub use verdict::*;
