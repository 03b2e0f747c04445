//! `spate-broker`: decides. Kafka handlers, shards, the controller and node start-up; builds
//! the `spated` binary. See the crate's README.md for where each type lives.

pub mod admin;
pub mod compaction;
pub mod config;
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
