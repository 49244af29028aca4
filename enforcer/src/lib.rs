//! The egress-enforcer agent (placeholder; being written).
