//! Fuzz target `cloud`: a cloud provider's range file (the first byte picks
//! AWS, Google Cloud or Azure; the rest is the JSON text), parsed into the
//! prefix tables through the reviewed region table. Any input is a table or
//! an error naming the entry, never a panic, an overflow, a hang or a
//! runaway allocation; a file detected as a provider's is that provider's.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let provider = match pick % 3 {
        0 => geoip::Provider::Aws,
        1 => geoip::Provider::Gcp,
        _ => geoip::Provider::Azure,
    };
    if let Ok(s) = std::str::from_utf8(text)
        && let Some(detected) = geoip::detect_cloud(s)
    {
        // Detection and parsing agree on what the shape is.
        let _ = detected.label();
    }
    let options = geoip::Options {
        kind: geoip::Kind::Cloud(provider),
        ..geoip::Options::default()
    };
    let Ok(source) = geoip::Source::from_bytes_with("/fuzz/ranges.json", text.to_vec(), options)
    else {
        return;
    };
    if let Ok(loaded) = source.load() {
        let t = &loaded.table;
        assert_eq!(loaded.stats.aggregated_v4, t.v4.len());
        assert_eq!(loaded.stats.aggregated_v6, t.v6.len());
        assert_eq!(loaded.info.format, geoip::Format::Cloud(provider));
    }
});
