//! Fuzz target `csv`: a CSV GeoIP source from text (`network,country` and
//! `first,last,country` rows), parsed into the prefix tables. Any input is a
//! table or an error naming the line, never a panic, an overflow, a hang or
//! a runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = geoip::Source::from_bytes("/fuzz/input.csv", data.to_vec()) else {
        return;
    };
    // Text that happens to carry the MaxMind DB marker is the `mmdb`
    // target's job.
    if source.is_mmdb() {
        return;
    }
    if let Ok(loaded) = source.load() {
        let t = &loaded.table;
        assert_eq!(loaded.stats.aggregated_v4, t.v4.len());
        assert_eq!(loaded.stats.aggregated_v6, t.v6.len());
    }
});
