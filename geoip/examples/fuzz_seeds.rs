//! Writes the seed corpus of the `mmdb` fuzz target (fuzz/, docs/fuzzing.md)
//! into the directory given as the only argument: a handful of small MaxMind
//! DB files covering both IP versions, both record schemas, aliased and
//! plain IPv4 subtrees, nested prefixes and the odd records (no country, a
//! code of the wrong type, `registered_country` only) the reader must cope
//! with. `cargo xtask fuzz` runs this; nothing binary is committed.

use std::{path::PathBuf, process::ExitCode};

use geoip::{
    Schema,
    writer::{MmdbWriter, Value, WriterError},
};

fn seeds() -> Result<Vec<(&'static str, Vec<u8>)>, WriterError> {
    let net = |s: &str| s.parse().expect("a valid network literal");
    let mut out = Vec::new();

    let mut w = MmdbWriter::new(4, Schema::Flat)?.build_epoch(1);
    w.insert(net("198.51.100.0/24"), "DE")
        .insert(net("198.51.100.128/25"), "FR")
        .insert(net("198.18.0.0/15"), "US");
    out.push(("v4-flat.mmdb", w.to_bytes()?));

    let mut w = MmdbWriter::new(6, Schema::Flat)?.build_epoch(1);
    w.insert(net("198.51.100.0/24"), "DE")
        .insert(net("2001:db8::/32"), "US")
        .insert(net("2001:db8:1::/48"), "NL");
    out.push(("v6-flat-aliased.mmdb", w.to_bytes()?));

    let mut w = MmdbWriter::new(6, Schema::MaxMind)?
        .build_epoch(1)
        .ipv4_aliases(false);
    w.insert(net("198.18.0.0/15"), "FR")
        .insert(net("2001:db8::/32"), "DE");
    w.insert_record(
        net("198.51.100.0/24"),
        Value::map([(
            "registered_country",
            Value::map([("iso_code", Value::from("CH"))]),
        )]),
    );
    out.push(("v6-maxmind-plain.mmdb", w.to_bytes()?));

    let flat = |v: Value| Value::map([("country_code", v)]);
    let mut w = MmdbWriter::new(6, Schema::Flat)?.build_epoch(1);
    w.insert_record(net("10.1.0.0/16"), flat(Value::from("de")))
        .insert_record(net("10.2.0.0/16"), flat(Value::from("DEU")))
        .insert_record(net("10.3.0.0/16"), flat(Value::from(42u32)))
        .insert_record(net("10.4.0.0/16"), Value::map([("asn", Value::from(1u32))]))
        .insert_record(net("10.5.0.0/16"), Value::from("DE"))
        .insert_record(net("10.6.0.0/16"), Value::array([Value::from(1u32)]))
        .insert_record(net("2001:db8::/32"), flat(Value::from("Fr")));
    out.push(("v6-odd-records.mmdb", w.to_bytes()?));

    let mut w = MmdbWriter::new(6, Schema::MaxMind)?
        .build_epoch(1)
        .database_type("GeoIP2-City");
    w.insert(net("::/0"), "DE").insert(net("2a00::/12"), "US");
    out.push(("v6-maxmind-wide.mmdb", w.to_bytes()?));
    Ok(out)
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: fuzz_seeds <directory>");
        return ExitCode::FAILURE;
    };
    let written = seeds().map_err(|e| e.to_string()).and_then(|seeds| {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, bytes) in &seeds {
            let path = dir.join(name);
            std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(seeds.len())
    });
    match written {
        Ok(n) => {
            println!("{n} seeds in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
