//! `cargo xtask`: developer automation (placeholder; being written).
fn main() {}
