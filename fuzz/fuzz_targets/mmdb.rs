//! Fuzz target `mmdb`: a MaxMind DB from bytes, opened (metadata and layout
//! checks) and loaded into the prefix tables, as the agent does with every
//! GeoIP source. Whatever the bytes, the result is a table or a
//! `GeoipError`, never a panic, an overflow, a hang or a runaway allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = geoip::Source::from_bytes("/fuzz/input.mmdb", data.to_vec()) else {
        return;
    };
    // Bytes without the metadata marker are CSV: the `csv` target's job.
    if !source.is_mmdb() {
        return;
    }
    if let Ok(loaded) = source.load() {
        // What was loaded must be a usable table: lookups at its edges agree
        // with the table itself.
        let table = geoip::GeoTable::layered(&[loaded.table]);
        assert_eq!(
            table.total_len(),
            loaded.stats.aggregated_v4 + loaded.stats.aggregated_v6
        );
    }
});
