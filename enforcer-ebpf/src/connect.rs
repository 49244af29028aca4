//! cgroup `connect4` / `connect6`: TCP connect() (also TCP Fast Open's
//! implicit connect) and UDP connect().

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use enforcer_common::Hook;

use crate::sock_addr::{apply, dest4, dest6};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    apply(&ctx, Hook::Connect4, dest4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    apply(&ctx, Hook::Connect6, dest6(&ctx))
}
