//! Writing small MaxMind DB files (feature `writer`), for tests and demos:
//! a database that maps the test ranges (198.51.100.0/24, 198.18.0.0/15,
//! 2001:db8::/32) to countries, in either schema, read back by the agent
//! exactly like a real one.
//!
//! The format work is done by the `mmdb-writer` crate; this module only
//! shapes country records. IPv6 databases alias the IPv4 subtree at
//! `::ffff:0:0/96`, `2001::/32` and `2002::/16` the way MaxMind's writers do
//! (unless [`MmdbWriter::ipv4_aliases`] turns that off), so the tests see the
//! same tree shapes as in GeoLite2.
//!
//! ```
//! use geoip::{Schema, writer::write_mmdb};
//! # let dir = std::env::temp_dir().join(format!("geoip-writer-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("test.mmdb");
//! write_mmdb(&path, 6, Schema::Flat, &[
//!     ("198.51.100.0/24".parse().unwrap(), "DE"),
//!     ("2001:db8::/32".parse().unwrap(), "US"),
//! ]).unwrap();
//! let loaded = geoip::Source::open(&path).unwrap().load().unwrap();
//! assert_eq!((loaded.stats.raw_v4, loaded.stats.raw_v6), (1, 1));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use ipnetwork::IpNetwork;
pub use mmdb_writer::Value;
use mmdb_writer::{IpVersion, Ipv4Aliasing, Writer, ipnet::IpNet};

use crate::Schema;

/// Why a database could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// `ip_version` was not 4 or 6.
    #[error("ip_version must be 4 or 6, not {0}")]
    IpVersion(u16),
    /// A network could not be converted (never happens for valid networks).
    #[error("invalid network {0}")]
    Network(IpNetwork),
    /// The writer rejected an insert or the serialisation.
    #[error("{context}: {source}")]
    Mmdb {
        /// What was being done.
        context: String,
        /// The writer's error.
        #[source]
        source: mmdb_writer::Error,
    },
    /// The file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Io {
        /// The output file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A country database being built.
pub struct MmdbWriter {
    database_type: String,
    ip_version: IpVersion,
    schema: Schema,
    aliases: bool,
    build_epoch: Option<u64>,
    entries: Vec<(IpNetwork, Value)>,
}

impl MmdbWriter {
    /// A database of `ip_version` (4 or 6) in `schema`. Its `database_type`
    /// is `GeoLite2-Country` for the MaxMind schema and
    /// `ee-test-country` for the flat one.
    pub fn new(ip_version: u16, schema: Schema) -> Result<Self, WriterError> {
        let ip_version = match ip_version {
            4 => IpVersion::V4,
            6 => IpVersion::V6,
            v => return Err(WriterError::IpVersion(v)),
        };
        Ok(MmdbWriter {
            database_type: match schema {
                Schema::MaxMind => "GeoLite2-Country",
                Schema::Flat => "ee-test-country",
            }
            .to_owned(),
            ip_version,
            schema,
            aliases: true,
            build_epoch: None,
            entries: Vec::new(),
        })
    }

    /// Sets the metadata `database_type`.
    pub fn database_type(mut self, t: &str) -> Self {
        t.clone_into(&mut self.database_type);
        self
    }

    /// Whether an IPv6 database aliases the IPv4 subtree (default true).
    pub fn ipv4_aliases(mut self, on: bool) -> Self {
        self.aliases = on;
        self
    }

    /// Sets `build_epoch` (default: now), for reproducible files.
    pub fn build_epoch(mut self, epoch: u64) -> Self {
        self.build_epoch = Some(epoch);
        self
    }

    /// Maps `net` to `code` in the writer's schema. The code is written as
    /// given (not validated), so tests can write bad ones.
    pub fn insert(&mut self, net: IpNetwork, code: &str) -> &mut Self {
        let record = match self.schema {
            Schema::MaxMind => Value::map([(
                "country",
                Value::map([
                    ("iso_code", Value::from(code)),
                    ("names", Value::map([("en", Value::from(code))])),
                ]),
            )]),
            Schema::Flat => Value::map([("country_code", Value::from(code))]),
        };
        self.entries.push((net, record));
        self
    }

    /// Maps `net` to an arbitrary record (e.g. one without a country, or with
    /// `registered_country` only).
    pub fn insert_record(&mut self, net: IpNetwork, record: Value) -> &mut Self {
        self.entries.push((net, record));
        self
    }

    /// The database bytes. Entries are inserted from the least to the most
    /// specific prefix, so a more specific entry wins whatever the order of
    /// the calls (for equal prefixes, the later call).
    pub fn to_bytes(&self) -> Result<Vec<u8>, WriterError> {
        let epoch = self
            .build_epoch
            .map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e))
            .unwrap_or_else(SystemTime::now);
        let mut w = Writer::builder(self.database_type.clone())
            .ip_version(self.ip_version)
            .ipv4_aliasing(if self.aliases {
                Ipv4Aliasing::Enabled
            } else {
                Ipv4Aliasing::Disabled
            })
            .description(&[("en", "egress-enforcer test database")])
            .build_epoch(epoch)
            .build();
        let mut order: Vec<&(IpNetwork, Value)> = self.entries.iter().collect();
        order.sort_by_key(|(n, _)| n.prefix());
        for (net, value) in order {
            let ipnet =
                IpNet::new(net.network(), net.prefix()).map_err(|_| WriterError::Network(*net))?;
            w.insert_value(ipnet, value.clone())
                .map_err(|source| WriterError::Mmdb {
                    context: format!("inserting {net}"),
                    source,
                })?;
        }
        w.to_bytes().map_err(|source| WriterError::Mmdb {
            context: "serialising".to_owned(),
            source,
        })
    }

    /// Writes the database to `path`.
    pub fn write(&self, path: &Path) -> Result<(), WriterError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| WriterError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

/// Writes a country database: `ip_version` 4 or 6, records in `schema`,
/// each network mapped to its code (more specific entries win).
pub fn write_mmdb(
    path: &Path,
    ip_version: u16,
    schema: Schema,
    entries: &[(IpNetwork, &str)],
) -> Result<(), WriterError> {
    let mut w = MmdbWriter::new(ip_version, schema)?;
    for (net, code) in entries {
        w.insert(*net, code);
    }
    w.write(path)
}
