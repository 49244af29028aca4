//! cgroup `sendmsg4` / `sendmsg6`: datagrams sent on unconnected UDP sockets
//! (sendto/sendmsg with an address), so QUIC and DNS over UDP too. The
//! kernel runs these only when the socket is not connected
//! (`udp_sendmsg`), so a connected socket is decided once, at connect.

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use enforcer_common::Hook;

use crate::sock_addr::{apply, dest4, dest6};

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    apply(&ctx, Hook::Sendmsg4, dest4(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    apply(&ctx, Hook::Sendmsg6, dest6(&ctx))
}
