//! GeoIP databases to prefix tables (placeholder; being written).
