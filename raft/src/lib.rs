//! Spate's consensus layer: a multi-raft driver over raft-rs, proven in a deterministic
//! simulator (`tests/sim`).
//!
//! One [`Driver`] runs on each shard and owns the Raft groups of the partitions that shard
//! owns; one tick drives all of them. raft-rs's `RawNode` stays private to this crate: the
//! rest of Spate sees only the driver, the plain types in [`types`] and three seams:
//!
//! * [`LogStore`] — the group's log (one entry = one opaque payload with term, index and
//!   [`EntryKind`]) and its hard state, with asynchronous, token-based durability. The real
//!   one is [`SegmentStore`] ([`segment`]): the partition's Kafka segment log is the Raft log
//!   (one entry = one record batch, control entries as Kafka control batches), hard state and
//!   membership in the node's metadata store, made durable by a pump task. The in-memory
//!   [`MemLogStore`]/[`MemDisk`] loses unsynced writes on a simulated crash.
//! * [`Transport`] — fire-and-forget delivery of one [`wire::Envelope`] per peer node per
//!   flush (heartbeats of all groups coalesced). [`MemNetwork`] is the in-memory one.
//! * [`Clock`] — milliseconds; [`ManualClock`] for tests, [`MonotonicClock`] for real use.
//!
//! ```
//! use bytes::Bytes;
//! use spate_raft::{
//!     Driver, DriverConfig, EntryKind, Event, GroupInit, ManualClock, MemDisk, MemNetwork,
//!     Membership,
//! };
//!
//! // One node, one single-voter group, a disk whose syncs complete at once.
//! let disk = MemDisk::with_auto_sync();
//! let net = MemNetwork::new();
//! let mut driver = Driver::new(DriverConfig::new(1), net.endpoint(1), ManualClock::new());
//! let voters = Membership::new([1], []);
//! driver.add_group(7, disk.store(7), GroupInit::Bootstrap(voters)).unwrap();
//! driver.campaign(7).unwrap();
//! driver.process();
//! let p = driver.propose(7, Bytes::from_static(b"a kafka batch")).unwrap();
//! driver.process();
//! let committed: Vec<_> = driver
//!     .take_events()
//!     .into_iter()
//!     .filter_map(|e| match e {
//!         Event::Committed { entries, .. } => Some(entries),
//!         _ => None,
//!     })
//!     .flatten()
//!     .collect();
//! // The leader's no-op of its term, then the batch.
//! assert_eq!(committed[0].kind, EntryKind::LeaderNoop);
//! assert_eq!(committed[1].index, p.index);
//! assert_eq!(committed[1].payload, "a kafka batch");
//! ```
//!
//! See `README.md` in this crate for the design, the simulator and what is missing.

mod adapter;
pub mod clock;
mod driver;
mod group;
pub mod mem;
pub mod rng;
pub mod segment;
pub mod store;
pub mod transport;
pub mod types;
pub mod wire;

pub use clock::{Clock, ManualClock, MonotonicClock};
#[cfg(feature = "fault-injection")]
pub use driver::Faults;
pub use driver::{
    Driver, DriverConfig, DriverError, DriverMetrics, Event, GroupInit, GroupStatus, Proposal,
    ProposeError, BOOTSTRAP_INDEX, BOOTSTRAP_TERM,
};
pub use mem::{MemDisk, MemLogStore};
pub use rng::Prng;
pub use segment::{MemMeta, MetaIo, SegmentConfig, SegmentStore};
pub use store::{LogStore, SnapshotPrep, StoreError, StoredState, SyncToken};
pub use transport::{MemNetwork, MemTransport, Transport};
pub use types::{
    EntryKind, GroupId, HardState, LogEntry, LogStart, Membership, MembershipChange, NodeId, Role,
    SnapshotMeta,
};
