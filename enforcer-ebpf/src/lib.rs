//! The egress-enforcer datapath is a binary (see `main.rs`); this empty
//! library target only lets `cargo` and rust-analyzer see the crate.
#![no_std]
