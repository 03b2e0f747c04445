//! `spate-storage`: what Spate persists.
//!
//! * [`metastore`]: the node's metadata store — raft-engine on its own thread, reached from
//!   shards by message. Holds the controller log (topics, configs) and every Raft group's
//!   hard state, membership and adapter keys (log anchor, applied checkpoint).
//! * [`dma`]: direct-I/O helpers over glommio's `DmaFile` and its known traps.
//! * [`log`]: the partition log — record batches in segment files (O_DIRECT), group commit,
//!   reads, truncation and crash recovery. One per partition, on the partition's shard.
//!
//! **Architecture invariant:** nothing here knows Kafka request types; nothing here blocks a
//! shard (raft-engine's synchronous writes run on the metadata thread only).

pub mod dma;
pub mod log;
pub mod metastore;
