//! Rebuild the datapath when the bpf-linker binary changes.
//!
//! Building this crate depends on `bpf-linker`, which cargo cannot track as a
//! dependency (no artifact dependencies on stable): keying the build on the
//! linker's path makes cargo rebuild when a different one is installed.
use which::which;

fn main() {
    // diagnostics.rs: the verifier checks a global function once per
    // program. Exported, it stays one: bpf-linker would otherwise make it
    // internal, and LLVM may then change its signature (drop an argument),
    // which its BTF, still global, would no longer describe.
    println!("cargo:rustc-link-arg-bins=--export=enforcer_report_fault");
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        // Leave the error to the link step, which names the missing linker;
        // `cargo xtask setup` installs it.
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH; run `cargo xtask setup`"),
    }
}
