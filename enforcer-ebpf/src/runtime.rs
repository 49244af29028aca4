//! What every eBPF object of this crate needs besides its programs: the
//! panic handler `no_std` requires and the licence section. Shared by the
//! datapath (`main.rs`) and the bench object (`bench.rs`).

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any path that
    // could get here, because it never returns.
    loop {}
}

/// Some helpers are GPL-only; the datapath is dual licensed to use them.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
