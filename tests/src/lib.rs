//! Integration-test support (placeholder; being written).
