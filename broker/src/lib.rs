//! `spate-broker`: decides. Kafka handlers, shards, the controller and node start-up; builds
//! the `spated` binary. See the crate's README.md for where each type lives.

pub mod admin;
pub mod compaction;
pub mod config;
pub mod consensus;
pub mod data;
pub mod groups;
pub mod kafka;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod producer_state;
pub mod retention;
pub mod rt;
pub mod shard;
pub mod view;

/// Wall-clock milliseconds since the Unix epoch (record timestamps, retention and group
/// clocks); 0 if the clock is before 1970.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
