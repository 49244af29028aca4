//! What the real-data tests share: finding the files `cargo xtask geoip
//! fetch` placed.

use std::path::PathBuf;

/// The file `name` in `EE_GEOIP_DIR`, or None (after saying why) when it
/// is not there and this is not CI; under CI (`CI` set to anything
/// non-empty) a missing file fails the test: CI must test against real
/// data.
pub fn real_file(name: &str) -> Option<PathBuf> {
    let why = match std::env::var_os("EE_GEOIP_DIR").filter(|d| !d.is_empty()) {
        None => "EE_GEOIP_DIR is not set".to_owned(),
        Some(dir) => {
            let path = PathBuf::from(dir).join(name);
            if path.is_file() {
                return Some(path);
            }
            format!("{} does not exist", path.display())
        }
    };
    let how = "run `cargo xtask geoip fetch` and point EE_GEOIP_DIR at the directory it prints";
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{why}: the real-data tests must run in CI; {how}");
    }
    eprintln!("skipping: {why} ({how})");
    None
}
