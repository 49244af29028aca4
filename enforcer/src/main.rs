//! `enforcer`: the egress-enforcer agent and its CLI. Everything lives in the
//! library; see `enforcer::cli`.
use std::process::ExitCode;

fn main() -> ExitCode {
    enforcer::cli::main()
}
