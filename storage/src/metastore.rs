//! The node-local metadata store: raft-engine on one dedicated thread.
//!
//! raft-engine's calls are synchronous and fsync, so they never run on a shard. Shards send
//! [`MetaStore`] requests over a bounded channel and await the reply; the thread drains every
//! queued request, writes them as one `LogBatch` with one `fdatasync` (group commit), then
//! answers them all.
//!
//! Layout: Raft group [`CONTROLLER_GROUP`] holds the controller log — one entry per metadata
//! command, in the same `eraftpb::Entry` form the controller's Raft group will use when the
//! cluster grows past one node.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use bytes::Bytes;
use raft::eraftpb::Entry;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};
use tracing::{error, info};

/// raft-engine group id of the controller log.
pub const CONTROLLER_GROUP: u64 = 1;
/// Requests queued for the metadata thread before senders wait (backpressure).
pub const METASTORE_QUEUE_MAX: usize = 1024;
/// Requests merged into one synchronous write.
pub const METASTORE_BATCH_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum MetaStoreError {
    #[error("metadata store at {dir}: {source}")]
    Open {
        dir: PathBuf,
        source: raft_engine::Error,
    },
    #[error("metadata store write failed: {0}")]
    Write(String),
    #[error("metadata store thread is gone")]
    Gone,
}

#[derive(Clone)]
struct EntryExt;
impl MessageExt for EntryExt {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

enum Op {
    AppendController {
        data: Bytes,
        reply: flume::Sender<Result<u64, MetaStoreError>>,
    },
    Stop,
}

/// A handle shards use to reach the metadata thread. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct MetaStore {
    tx: flume::Sender<Op>,
}

/// What was on disk at open.
pub struct Recovered {
    /// The controller log, `(index, data)` in index order.
    pub controller_log: Vec<(u64, Bytes)>,
}

/// The metadata thread; join it after [`MetaStore::stop`].
pub struct MetaStoreThread {
    handle: JoinHandle<()>,
}

impl MetaStoreThread {
    pub fn join(self) {
        let _ = self.handle.join();
    }
}

impl MetaStore {
    /// Opens (or creates) the store under `dir`, reads back the controller log, and starts the
    /// metadata thread. Call this before the shards start: it blocks.
    pub fn open(dir: &Path) -> Result<(MetaStore, Recovered, MetaStoreThread), MetaStoreError> {
        let cfg = Config {
            dir: dir.to_string_lossy().into_owned(),
            target_file_size: ReadableSize::mb(16),
            ..Default::default()
        };
        let engine = Engine::open(cfg).map_err(|source| MetaStoreError::Open {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut entries = Vec::new();
        if let (Some(first), Some(last)) = (
            engine.first_index(CONTROLLER_GROUP),
            engine.last_index(CONTROLLER_GROUP),
        ) {
            engine
                .fetch_entries_to::<EntryExt>(CONTROLLER_GROUP, first, last + 1, None, &mut entries)
                .map_err(|source| MetaStoreError::Open {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        let controller_log: Vec<(u64, Bytes)> =
            entries.into_iter().map(|e| (e.index, e.data)).collect();
        let next_index = controller_log.last().map(|(i, _)| i + 1).unwrap_or(1);
        info!(
            dir = %dir.display(),
            controller_entries = controller_log.len(),
            "metadata store opened"
        );
        let (tx, rx) = flume::bounded(METASTORE_QUEUE_MAX);
        let handle = std::thread::Builder::new()
            .name("spate-metastore".into())
            .spawn(move || run(engine, rx, next_index))
            .map_err(|e| MetaStoreError::Write(format!("spawning metadata thread: {e}")))?;
        Ok((
            MetaStore { tx },
            Recovered { controller_log },
            MetaStoreThread { handle },
        ))
    }

    /// Appends one controller-log entry durably; returns its index.
    pub async fn append_controller(&self, data: Bytes) -> Result<u64, MetaStoreError> {
        let (reply, rx) = flume::bounded(1);
        self.tx
            .send_async(Op::AppendController { data, reply })
            .await
            .map_err(|_| MetaStoreError::Gone)?;
        rx.recv_async().await.map_err(|_| MetaStoreError::Gone)?
    }

    /// Asks the thread to finish the queued writes and exit (from any thread; never blocks).
    pub fn stop(&self) {
        let _ = self.tx.try_send(Op::Stop);
    }
}

fn run(engine: Engine, rx: flume::Receiver<Op>, mut next_index: u64) {
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut ops = vec![first];
        while ops.len() < METASTORE_BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut batch = LogBatch::default();
        let mut entries = Vec::new();
        let mut replies = Vec::new();
        for op in ops {
            match op {
                Op::AppendController { data, reply } => {
                    entries.push(Entry {
                        index: next_index,
                        term: 1,
                        data,
                        ..Default::default()
                    });
                    replies.push((next_index, reply));
                    next_index += 1;
                }
                Op::Stop => stop = true,
            }
        }
        if entries.is_empty() {
            continue;
        }
        let result = batch
            .add_entries::<EntryExt>(CONTROLLER_GROUP, &entries)
            .and_then(|_| engine.write(&mut batch, true));
        match result {
            Ok(_) => {
                for (index, reply) in replies {
                    let _ = reply.send(Ok(index));
                }
            }
            Err(e) => {
                error!(error = %e, "metadata store write failed");
                // The indexes were not used: hand them out again.
                next_index -= replies.len() as u64;
                for (_, reply) in replies {
                    let _ = reply.send(Err(MetaStoreError::Write(e.to_string())));
                }
            }
        }
    }
    info!("metadata store thread stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_log_survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        assert!(rec.controller_log.is_empty());
        let idx: Vec<u64> = futures_lite::future::block_on(async {
            let mut v = Vec::new();
            for i in 0..5u8 {
                v.push(
                    store
                        .append_controller(Bytes::from(vec![i; 3]))
                        .await
                        .unwrap(),
                );
            }
            v
        });
        assert_eq!(idx, vec![1, 2, 3, 4, 5]);
        store.stop();
        thread.join();

        let (store, rec, thread) = MetaStore::open(dir.path()).unwrap();
        let got: Vec<(u64, Vec<u8>)> = rec
            .controller_log
            .iter()
            .map(|(i, d)| (*i, d.to_vec()))
            .collect();
        assert_eq!(got.len(), 5);
        assert_eq!(got[4], (5, vec![4u8; 3]));
        let next =
            futures_lite::future::block_on(store.append_controller(Bytes::from_static(b"x")));
        assert_eq!(next.unwrap(), 6);
        store.stop();
        thread.join();
    }
}
