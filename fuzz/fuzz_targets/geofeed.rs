//! Fuzz target `geofeed`: an RFC 8805 geofeed from text, parsed into the
//! prefix tables. Any input is a table or an error naming the line, never
//! a panic, an overflow, a hang or a runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let options = geoip::Options {
        kind: geoip::Kind::Geofeed,
        ..geoip::Options::default()
    };
    let Ok(source) = geoip::Source::from_bytes_with("/fuzz/feed.csv", data.to_vec(), options)
    else {
        return;
    };
    if let Ok(loaded) = source.load() {
        let t = &loaded.table;
        assert_eq!(loaded.stats.aggregated_v4, t.v4.len());
        assert_eq!(loaded.stats.aggregated_v6, t.v6.len());
    }
});
