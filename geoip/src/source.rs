//! [`Source`]: one database file, its format detected from its content, and
//! what loading it yields ([`Loaded`]: tables, [`Stats`], [`SourceInfo`]).

use std::{
    fmt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use crate::{Aliases, GeoTable, GeoipError, aliases, cloud::Provider, csv, mmdb};

/// The marker before a MaxMind DB's metadata section.
const METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";
/// The metadata section is at most 128 KiB (MaxMind DB spec), so the marker
/// is within that distance of the end of a complete file.
const METADATA_MAX: usize = 128 * 1024;

/// Which record fields give the country.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Schema {
    /// GeoIP2/GeoLite2 Country and City: `country.iso_code`, else
    /// `registered_country.iso_code`.
    MaxMind,
    /// DB-IP lite, ip-location-db, IPinfo: top-level `country_code`.
    Flat,
}

/// For MaxMind-schema databases: which record field locates a network.
///
/// `country` is where the network is used (MaxMind's best estimate of the
/// location); `registered_country` is where the owner registered it (a
/// cloud provider's addresses are usually registered in the US wherever
/// they are used). Each falls back to the other when a record lacks it. The
/// flat schema has one field; the choice does not apply to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CountryField {
    /// `country.iso_code`, else `registered_country.iso_code`.
    #[default]
    Country,
    /// `registered_country.iso_code`, else `country.iso_code`.
    RegisteredCountry,
}

impl CountryField {
    /// The config's spelling: `country`, `registered_country`.
    pub fn label(self) -> &'static str {
        match self {
            CountryField::Country => "country",
            CountryField::RegisteredCountry => "registered_country",
        }
    }

    /// Parses [`label`](Self::label)'s spelling.
    pub fn from_label(text: &str) -> Option<CountryField> {
        match text {
            "country" => Some(CountryField::Country),
            "registered_country" => Some(CountryField::RegisteredCountry),
            _ => None,
        }
    }
}

/// What kind of file a source is, as configured: `auto` detects it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A MaxMind DB when the metadata marker is near the end, otherwise a
    /// CSV text file.
    #[default]
    Auto,
    /// A MaxMind DB; anything else is an error.
    Mmdb,
    /// `network,country` or `first,last,country` rows.
    Csv,
    /// An RFC 8805 geofeed: `prefix,country,region,city,postal`.
    Geofeed,
    /// A cloud provider's published range file.
    Cloud(Provider),
}

impl Kind {
    /// Every kind with its config spelling.
    pub const ALL: &[(Kind, &'static str)] = &[
        (Kind::Auto, "auto"),
        (Kind::Mmdb, "mmdb"),
        (Kind::Csv, "csv"),
        (Kind::Geofeed, "geofeed"),
        (Kind::Cloud(Provider::Aws), "aws"),
        (Kind::Cloud(Provider::Gcp), "gcp"),
        (Kind::Cloud(Provider::Azure), "azure"),
    ];

    /// The config's spelling.
    pub fn label(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("auto", |(_, l)| l)
    }

    /// Parses [`label`](Self::label)'s spelling.
    pub fn from_label(text: &str) -> Option<Kind> {
        Self::ALL.iter().find(|(_, l)| *l == text).map(|(k, _)| *k)
    }

    /// Whether a file of this kind may be a MaxMind DB.
    pub fn may_be_mmdb(self) -> bool {
        matches!(self, Kind::Auto | Kind::Mmdb)
    }
}

/// How to read one source: its kind and, for MaxMind DBs, the field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Options {
    /// What the file is (`auto` detects it).
    pub kind: Kind,
    /// Which field locates a network in a MaxMind-schema database.
    pub country_field: CountryField,
}

/// One configured source: a path and how to read it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceSpec {
    /// The file.
    pub path: PathBuf,
    /// How to read it.
    pub options: Options,
}

impl SourceSpec {
    /// A source read with the default options (kind detected, `country`).
    pub fn path(path: impl Into<PathBuf>) -> SourceSpec {
        SourceSpec {
            path: path.into(),
            options: Options::default(),
        }
    }

    /// Opens and loads it.
    pub fn load(&self) -> Result<Loaded, GeoipError> {
        Source::open_with(&self.path, self.options)?.load()
    }
}

/// The format of a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A MaxMind DB (.mmdb), detected by its metadata marker.
    Mmdb {
        /// The record schema, detected from `database_type` or the records.
        schema: Schema,
        /// The database's `ip_version`: 4 (IPv4 only) or 6.
        ip_version: u16,
        /// The field that located networks (MaxMind schema).
        field: CountryField,
    },
    /// A CSV text file.
    Csv,
    /// An RFC 8805 geofeed.
    Geofeed,
    /// A cloud provider's range file, located by the reviewed region table.
    Cloud(Provider),
}

impl Format {
    /// A short name: `csv`, `mmdb-maxmind`, `mmdb-maxmind-registered`
    /// (located by `registered_country`), `mmdb-flat`. Stable: the agent's
    /// baseline manifest stores it.
    pub fn label(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Mmdb {
                schema: Schema::MaxMind,
                field: CountryField::Country,
                ..
            } => "mmdb-maxmind",
            Format::Mmdb {
                schema: Schema::MaxMind,
                field: CountryField::RegisteredCountry,
                ..
            } => "mmdb-maxmind-registered",
            Format::Mmdb {
                schema: Schema::Flat,
                ..
            } => "mmdb-flat",
            Format::Geofeed => "geofeed",
            Format::Cloud(p) => p.label(),
        }
    }

    /// Parses [`label`](Self::label), with the IP version of a MaxMind DB
    /// (None for the text formats); None when they do not fit together.
    pub fn from_label(label: &str, ip_version: Option<u16>) -> Option<Format> {
        let mmdb = |schema, field| {
            ip_version.map(|ip_version| Format::Mmdb {
                schema,
                ip_version,
                field,
            })
        };
        match label {
            "csv" => Some(Format::Csv),
            "geofeed" => Some(Format::Geofeed),
            "aws" => Some(Format::Cloud(Provider::Aws)),
            "gcp" => Some(Format::Cloud(Provider::Gcp)),
            "azure" => Some(Format::Cloud(Provider::Azure)),
            "mmdb-maxmind" => mmdb(Schema::MaxMind, CountryField::Country),
            "mmdb-maxmind-registered" => mmdb(Schema::MaxMind, CountryField::RegisteredCountry),
            "mmdb-flat" => mmdb(Schema::Flat, CountryField::Country),
            _ => None,
        }
    }
}

/// Counts from one load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// IPv4 networks (or CSV rows) that carried a country, before aggregation.
    pub raw_v4: usize,
    /// IPv6 networks (or CSV rows) that carried a country, before aggregation.
    pub raw_v6: usize,
    /// Networks with data but no usable country (not in the table).
    pub unlocated: usize,
    /// Of `unlocated`: networks whose country field is present but is not
    /// two ASCII letters.
    pub invalid_codes: usize,
    /// Of `raw_v4` and `raw_v6`: prefixes given the anycast class
    /// ([`CountryCode::ANYCAST`](crate::CountryCode::ANYCAST)), as served
    /// from many countries (cloud `GLOBAL` ranges, global Azure tags, a
    /// prefix one file lists in two countries, geofeed `XA` rows).
    pub anycast: usize,
    /// IPv4 prefixes after aggregation.
    pub aggregated_v4: usize,
    /// IPv6 prefixes after aggregation.
    pub aggregated_v6: usize,
}

/// Where a table came from, for logs, metrics and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceInfo {
    /// The file as opened.
    pub path: PathBuf,
    /// Its format (and for .mmdb its schema and IP version).
    pub format: Format,
    /// The MaxMind DB `database_type` (e.g. `GeoLite2-Country`); None for CSV.
    pub database_type: Option<String>,
    /// The MaxMind DB `build_epoch` (Unix seconds); None for CSV.
    pub build_epoch: Option<u64>,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

/// What [`Source::load`] returns.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The aggregated tables.
    pub table: GeoTable,
    /// Counts before and after aggregation.
    pub stats: Stats,
    /// What was loaded.
    pub info: SourceInfo,
    /// What an operator should know that did not stop the load: regions
    /// of a cloud range file not in the reviewed table (their prefixes are
    /// left to the next source), prefixes listed in several countries.
    pub warnings: Vec<String>,
}

enum Content {
    /// The reader, and the ranges its tree answers through IPv4 (measured
    /// on the bytes before the reader took them).
    Mmdb(Box<maxminddb::Reader<Vec<u8>>>, Aliases),
    Csv(String),
    Geofeed(String),
    Cloud(String, Provider),
}

/// One database file, read into memory and checked for its format.
pub struct Source {
    path: PathBuf,
    sha256: String,
    content: Content,
    options: Options,
}

impl fmt::Debug for Source {
    // The reader holds the whole file: print what identifies it instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("mmdb", &self.is_mmdb())
            .finish()
    }
}

impl Source {
    /// Reads `path` and detects its format: a MaxMind DB when the metadata
    /// marker is near its end (whatever the file is called), otherwise a CSV
    /// text file. The MaxMind DB metadata and layout are validated here;
    /// records are read by [`load`](Self::load).
    pub fn open(path: &Path) -> Result<Source, GeoipError> {
        Self::open_with(path, Options::default())
    }

    /// Like [`open`](Self::open), read as `options` say.
    pub fn open_with(path: &Path, options: Options) -> Result<Source, GeoipError> {
        let bytes = std::fs::read(path).map_err(|source| GeoipError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes_with(path, bytes, options)
    }

    /// Like [`open`](Self::open) for bytes already in memory; `path` only
    /// labels errors and [`SourceInfo`].
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Source, GeoipError> {
        Self::from_bytes_with(path, bytes, Options::default())
    }

    /// Like [`from_bytes`](Self::from_bytes), read as `options` say.
    pub fn from_bytes_with(
        path: impl Into<PathBuf>,
        bytes: Vec<u8>,
        options: Options,
    ) -> Result<Source, GeoipError> {
        let path = path.into();
        let format_err = |reason: &str| GeoipError::Format {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        if bytes.is_empty() {
            return Err(format_err("the file is empty (an interrupted download?)"));
        }
        let sha256 = hex(&Sha256::digest(&bytes));
        let tail = &bytes[bytes
            .len()
            .saturating_sub(METADATA_MAX + METADATA_MARKER.len())..];
        let has_marker = tail
            .windows(METADATA_MARKER.len())
            .any(|w| w == METADATA_MARKER);
        if options.kind == Kind::Mmdb && !has_marker {
            return Err(format_err(
                "configured as kind \"mmdb\" but there is no MaxMind DB metadata marker \
                 (\\xab\\xcd\\xefMaxMind.com) near its end: a truncated or corrupt .mmdb, \
                 or another kind of file",
            ));
        }
        let content = if has_marker && options.kind != Kind::Csv {
            let mmdb_err = |source| GeoipError::Mmdb {
                path: path.clone(),
                source,
            };
            let found = {
                let md = maxminddb::Reader::from_source(bytes.as_slice()).map_err(mmdb_err)?;
                let md = md.metadata();
                if md.ip_version == 6 {
                    aliases::detect(&bytes, md.node_count, md.record_size)
                } else {
                    Aliases::NONE
                }
            };
            let reader =
                maxminddb::Reader::from_source(bytes).map_err(|source| GeoipError::Mmdb {
                    path: path.clone(),
                    source,
                })?;
            Content::Mmdb(Box::new(reader), found)
        } else {
            match String::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => match options.kind {
                    Kind::Geofeed => Content::Geofeed(text),
                    Kind::Cloud(p) => Content::Cloud(text, p),
                    Kind::Csv => Content::Csv(text),
                    // A JSON object in a known provider's shape is that
                    // provider's range file; any other text is CSV.
                    Kind::Auto | Kind::Mmdb => match crate::cloud::detect(&text) {
                        Some(p) => Content::Cloud(text, p),
                        None => Content::Csv(text),
                    },
                },
                _ => {
                    return Err(format_err(
                        "binary content without a MaxMind DB metadata marker \
                         (\\xab\\xcd\\xefMaxMind.com) near its end: a truncated or corrupt .mmdb, \
                         or not a GeoIP database (CSV sources must be UTF-8 text)",
                    ));
                }
            }
        };
        Ok(Source {
            path,
            sha256,
            content,
            options,
        })
    }

    /// The path the source was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the file, lowercase hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// True for a MaxMind DB, false for the text formats.
    pub fn is_mmdb(&self) -> bool {
        matches!(self.content, Content::Mmdb(..))
    }

    /// Reads every network or row into aggregated tables.
    ///
    /// A MaxMind DB without any located network is an error (the wrong kind
    /// of database, e.g. an ASN one); a CSV may be empty (an overlay with no
    /// rows yet).
    pub fn load(&self) -> Result<Loaded, GeoipError> {
        match &self.content {
            Content::Mmdb(reader, aliases) => {
                let md = reader.metadata();
                let field = self.options.country_field;
                let loaded = mmdb::load(reader, *aliases, field, &self.path)?;
                Ok(Loaded {
                    table: loaded.table,
                    stats: loaded.stats,
                    info: SourceInfo {
                        path: self.path.clone(),
                        format: Format::Mmdb {
                            schema: loaded.schema,
                            ip_version: md.ip_version,
                            field,
                        },
                        database_type: Some(md.database_type.clone()),
                        build_epoch: Some(md.build_epoch),
                        sha256: self.sha256.clone(),
                    },
                    warnings: Vec::new(),
                })
            }
            Content::Csv(text) => {
                let (table, stats) = csv::parse(text, &self.path)?;
                Ok(self.text_loaded(Format::Csv, table, stats, Vec::new()))
            }
            Content::Geofeed(text) => {
                let p = crate::geofeed::parse(text, &self.path)?;
                Ok(self.text_loaded(Format::Geofeed, p.table, p.stats, p.warnings))
            }
            Content::Cloud(text, provider) => {
                let p = crate::cloud::parse(text, *provider, &self.path)?;
                Ok(self.text_loaded(Format::Cloud(*provider), p.table, p.stats, p.warnings))
            }
        }
    }
}

impl Source {
    /// What loading a text source yields (no database type, no build time).
    fn text_loaded(
        &self,
        format: Format,
        table: GeoTable,
        stats: Stats,
        warnings: Vec<String>,
    ) -> Loaded {
        Loaded {
            table,
            stats,
            info: SourceInfo {
                path: self.path.clone(),
                format,
                database_type: None,
                build_epoch: None,
                sha256: self.sha256.clone(),
            },
            warnings,
        }
    }
}

/// Lowercase hex of `bytes`: how [`SourceInfo::sha256`] is written, so
/// that a digest computed elsewhere compares equal to it.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_of_sha256() {
        assert_eq!(
            hex(&Sha256::digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn empty_and_binary_files_are_format_errors_naming_the_file() {
        let e = Source::from_bytes("/x/empty.mmdb", Vec::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/x/empty.mmdb: unrecognised format: the file is empty (an interrupted download?)"
        );
        let e = Source::from_bytes("/x/bin.mmdb", vec![0, 1, 2, 0xff]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/x/bin.mmdb: unrecognised format: binary content"),
            "{e}"
        );
        let mut random = Vec::new();
        let mut x = 0x1234_5678_u32;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            random.push(x as u8);
        }
        let e = Source::from_bytes("/x/random.bin", random).unwrap_err();
        assert!(matches!(e, GeoipError::Format { .. }), "{e}");
        assert_eq!(e.path(), Path::new("/x/random.bin"));
    }

    #[test]
    fn a_marker_with_garbage_metadata_is_an_mmdb_error() {
        let mut bytes = b"garbage".to_vec();
        bytes.extend_from_slice(METADATA_MARKER);
        bytes.extend_from_slice(b"\x00\x01\x02");
        let e = Source::from_bytes("/x/bad.mmdb", bytes).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/x/bad.mmdb: invalid MaxMind DB: "),
            "{e}"
        );
    }

    #[test]
    fn text_is_csv_whatever_its_name() {
        let s = Source::from_bytes("/x/overlay.mmdb", b"198.51.100.0/24,DE\n".to_vec()).unwrap();
        assert!(!s.is_mmdb());
        let l = s.load().unwrap();
        assert_eq!(l.info.format, Format::Csv);
        assert_eq!(l.stats.raw_v4, 1);
        assert_eq!(l.info.sha256.len(), 64);
    }

    #[test]
    fn kinds_are_detected_or_checked() {
        let aws = br#"{"syncToken":"1","createDate":"2026-12-07-00-00-00","prefixes":[
            {"ip_prefix":"198.51.100.0/24","region":"eu-central-1","service":"EC2","network_border_group":"eu-central-1"},
            {"ip_prefix":"198.18.0.0/16","region":"GLOBAL","service":"CLOUDFRONT","network_border_group":"GLOBAL"}],
            "ipv6_prefixes":[]}"#;
        let with = |bytes: &[u8], kind: Kind| {
            Source::from_bytes_with(
                "/x/f",
                bytes.to_vec(),
                Options {
                    kind,
                    country_field: CountryField::Country,
                },
            )
            .and_then(|s| s.load())
        };
        // Detected by its shape, or named.
        for kind in [Kind::Auto, Kind::Cloud(Provider::Aws)] {
            let l = with(aws, kind).unwrap();
            assert_eq!(l.info.format, Format::Cloud(Provider::Aws));
            assert_eq!(l.info.format.label(), "aws");
            let at = |a: &str| {
                l.table
                    .lookup(a.parse().unwrap())
                    .map(|(_, c)| c.to_string())
            };
            assert_eq!(at("198.51.100.7").as_deref(), Some("DE"));
            assert_eq!(at("198.18.0.1").as_deref(), Some("XA"));
            assert_eq!(l.stats.anycast, 1);
        }
        // Named as another provider or as CSV: an error naming the file.
        let e = with(aws, Kind::Cloud(Provider::Gcp))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/x/f"), "{e}");
        assert!(with(aws, Kind::Csv).is_err());
        let e = with(b"198.51.100.0/24,DE\n", Kind::Mmdb)
            .unwrap_err()
            .to_string();
        assert!(e.contains("configured as kind \"mmdb\""), "{e}");
        // A geofeed is read only when named: its extra columns are not CSV.
        let feed = b"# geofeed\n198.51.100.0/24,DE,DE-BY,Munich,\n2001:db8::/32,XA,,,\n";
        let l = with(feed, Kind::Geofeed).unwrap();
        assert_eq!(l.info.format.label(), "geofeed");
        assert_eq!(l.stats.anycast, 1);
        assert!(
            with(feed, Kind::Auto).is_err(),
            "five fields are not a CSV row"
        );
        for (kind, label) in Kind::ALL {
            assert_eq!(Kind::from_label(label), Some(*kind));
            assert_eq!(kind.label(), *label);
        }
        for label in ["csv", "geofeed", "aws", "gcp", "azure"] {
            assert_eq!(
                Format::from_label(label, None).map(Format::label),
                Some(label)
            );
        }
        for label in ["mmdb-maxmind", "mmdb-maxmind-registered", "mmdb-flat"] {
            assert_eq!(
                Format::from_label(label, Some(6)).map(Format::label),
                Some(label)
            );
            assert_eq!(Format::from_label(label, None), None);
        }
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let e = Source::open(Path::new("/nonexistent/geo.mmdb")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/geo.mmdb: cannot read: "),
            "{e}"
        );
    }
}
