//! The wall clock in the unit the store's state is stamped in.

/// Seconds since the Unix epoch by this node's clock (0 for a clock set
/// before it): what expiries, the tombstone grace and the stamps of clock
/// entries, retired copies and hints are measured in. The crates read
/// the clock in seconds through here only.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
