//! A shard: one core's complete little broker (see ARCHITECTURE.md).
//!
//! Lives on every core, one per glommio executor. Holds that core's copy of the metadata
//! image, its end of the shard mesh, its connections; shard 0 also runs the controller.

pub mod mesh;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use spate_storage::log::batch::RecordBatch;

use glommio::sync::Semaphore;
use kafka_protocol::ResponseError;
use spate_net::conn::Shutdown;
use spate_storage::metastore::MetaStore;
use tracing::{error, info_span, Instrument};

use crate::config::Config;
use crate::metadata::controller::{
    plan, ControllerCtx, ControllerRequest, ControllerResponse, KError,
};
use crate::metadata::{MetadataImage, MetadataRecord};
use crate::metrics::ShardMetrics;
use crate::partition::{PartitionKey, PartitionManager};
use mesh::Mesh;

/// The shard that runs the controller.
pub const CONTROLLER_SHARD: usize = 0;

/// One partition's batch in a produce, already validated by the connection's shard.
pub struct ProduceItem {
    pub key: PartitionKey,
    pub batch: RecordBatch,
}

/// Outcome of one [`ProduceItem`].
#[derive(Debug, Clone, Copy)]
pub struct ProduceOutcome {
    pub error: ResponseError,
    pub base_offset: i64,
    pub log_start_offset: i64,
}

/// One partition of a fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchItem {
    pub key: PartitionKey,
    pub offset: i64,
    pub max_bytes: usize,
}

/// Outcome of one [`FetchItem`].
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub error: ResponseError,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

/// Requests one shard sends another.
pub enum ShardRequest {
    /// Append batches to partitions this shard owns; answered when durable (`wait`) or at once.
    Produce { items: Vec<ProduceItem>, wait: bool },
    /// Read from partitions this shard owns.
    Fetch { items: Vec<FetchItem> },
    /// Answer once any listed partition's high watermark passes the given one, or at the
    /// deadline.
    WaitHighWatermark {
        items: Vec<(PartitionKey, i64)>,
        max_wait: Duration,
    },
    /// `(partition, timestamp)`: -2 earliest, -1 latest, else by time.
    ListOffsets { items: Vec<(PartitionKey, i64)> },
    /// OffsetForLeaderEpoch: `(partition, current leader epoch (-1: unchecked), epoch)`.
    EpochEnds {
        items: Vec<(PartitionKey, i32, i32)>,
    },
    /// DeleteRecords: `(partition, offset)`, -1 meaning the high watermark.
    DeleteRecords { items: Vec<(PartitionKey, i64)> },
    /// A metadata change, for the controller shard.
    Controller(ControllerRequest),
    /// A consumer-group request for the coordinator of offsets partition `key`.
    Group {
        key: PartitionKey,
        call: Box<crate::groups::GroupCall>,
    },
    /// A committed controller-log entry to apply to this shard's image.
    Apply {
        index: u64,
        records: Vec<MetadataRecord>,
    },
}

pub enum ShardResponse {
    Controller(ControllerResponse),
    Applied,
    Produced(Vec<ProduceOutcome>),
    Fetched(Vec<FetchOutcome>),
    Woken,
    /// `(error, offset, timestamp)` per item.
    Offsets(Vec<(ResponseError, i64, i64)>),
    /// `(error, epoch, end offset)` per item.
    EpochEnds(Vec<(ResponseError, i32, i64)>),
    Group(crate::groups::GroupAnswer),
    /// `(error, new log start)` per item.
    Deleted(Vec<(ResponseError, i64)>),
}

pub struct Shard {
    pub id: usize,
    pub config: Config,
    pub image: RefCell<MetadataImage>,
    pub mesh: Mesh,
    pub store: MetaStore,
    /// Serializes controller requests (shard 0 only).
    controller_lock: Semaphore,
    /// Fired on SIGTERM/SIGINT: stop accepting and reading new requests.
    pub shutdown: Shutdown,
    /// Open Kafka connections on this shard.
    pub connections: Cell<usize>,
    /// The partitions this shard owns.
    pub partitions: PartitionManager,
    pub metrics: ShardMetrics,
    /// Incremental fetch sessions of this shard's connections (KIP-227).
    pub fetch_sessions: RefCell<crate::kafka::fetch_sessions::FetchSessions>,
    /// The consumer groups of the offsets partitions this shard owns.
    pub groups: std::rc::Rc<crate::groups::Coordinator>,
    /// Next producer id to hand out (controller shard only); a new block is persisted when it
    /// reaches the image's `producer_ids_end`.
    next_producer_id: Cell<i64>,
}

impl Shard {
    pub fn new(
        config: Config,
        image: MetadataImage,
        mesh: Mesh,
        store: MetaStore,
        sentinel: PathBuf,
        epochs: std::sync::Arc<crate::consensus::LeaderEpochs>,
        groups: crate::consensus::RecoveredGroups,
    ) -> Shard {
        let metrics = ShardMetrics::new(mesh.shard_id());
        Shard {
            partitions: PartitionManager::new(
                mesh.shard_id(),
                &config,
                sentinel,
                crate::consensus::Consensus::new(config.node_id, epochs),
                store.clone(),
                metrics.fsync_seconds.clone(),
                groups,
            ),
            metrics,
            fetch_sessions: RefCell::new(crate::kafka::fetch_sessions::FetchSessions::new(
                mesh.shard_id(),
            )),
            groups: std::rc::Rc::new(crate::groups::Coordinator::new(config.groups.clone())),
            next_producer_id: Cell::new(image.producer_ids_end),
            id: mesh.shard_id(),
            config,
            image: RefCell::new(image),
            mesh,
            store,
            controller_lock: Semaphore::new(1),
            shutdown: Shutdown::default(),
            connections: Cell::new(0),
        }
    }

    /// Applies a committed controller-log entry to this shard's image and opens or deletes
    /// the partitions it now owns or no longer owns.
    pub async fn apply(&self, index: u64, records: &[MetadataRecord]) {
        let deleted: Vec<String> = {
            let img = self.image.borrow();
            records
                .iter()
                .filter_map(|r| match r {
                    MetadataRecord::DeleteTopic { id } => img.names_by_id.get(id).cloned(),
                    _ => None,
                })
                .collect()
        };
        self.image.borrow_mut().apply(index, records);
        for topic in deleted {
            // Kafka drops committed offsets of deleted topics.
            self.groups.topic_deleted(self, &topic);
        }
        let image = self.image.borrow().clone();
        self.partitions
            .reconcile(&image, self.mesh.nr_shards())
            .await;
        self.metrics.partitions.set(self.partitions.len() as i64);
    }

    /// Sends `req` to shard `to`, or serves it here when `to` is this shard.
    pub async fn call(&self, to: usize, req: ShardRequest) -> Result<ShardResponse, KError> {
        if to == self.id {
            return Ok(handle_shard_request(self, req).await);
        }
        self.mesh
            .call(to, req)
            .await
            .map_err(|e| KError::new(ResponseError::NotLeaderOrFollower, e.to_string()))
    }

    pub fn controller_ctx(&self) -> ControllerCtx {
        ControllerCtx {
            node_id: self.config.node_id,
            live_brokers: 1,
            default_partitions: self.config.default_partitions,
            default_replication_factor: self.config.default_replication_factor,
        }
    }

    /// Runs a metadata change through the controller (on shard 0, wherever we are).
    pub async fn controller(&self, req: ControllerRequest) -> Result<ControllerResponse, KError> {
        if self.id == CONTROLLER_SHARD {
            return Ok(self.execute_controller(req).await);
        }
        match self
            .mesh
            .call(CONTROLLER_SHARD, ShardRequest::Controller(req))
            .await
        {
            Ok(ShardResponse::Controller(r)) => Ok(r),
            Ok(_) => Err(KError::new(
                ResponseError::UnknownServerError,
                "controller answered with the wrong response type",
            )),
            Err(e) => Err(KError::new(ResponseError::NotController, e.to_string())),
        }
    }

    async fn execute_controller(&self, req: ControllerRequest) -> ControllerResponse {
        let _permit = self.controller_lock.acquire_permit(1).await;
        if let ControllerRequest::InitProducerId { existing } = req {
            return ControllerResponse::ProducerId(self.allocate_producer_id(existing).await);
        }
        let ctx = self.controller_ctx();
        let (resp, records) = plan(&self.image.borrow(), &ctx, &req);
        if records.is_empty() {
            return resp;
        }
        let data = match serde_json::to_vec(&records) {
            Ok(d) => d,
            Err(e) => {
                error!(error = %e, "encoding metadata records");
                return resp.fail_all(&KError::new(
                    ResponseError::UnknownServerError,
                    e.to_string(),
                ));
            }
        };
        let index = match self.store.append_controller(data.into()).await {
            Ok(i) => i,
            Err(e) => {
                error!(error = %e, "persisting metadata records");
                return resp.fail_all(&KError::new(
                    ResponseError::KafkaStorageError,
                    e.to_string(),
                ));
            }
        };
        self.apply(index, &records).await;
        for shard in 0..self.mesh.nr_shards() {
            if shard == self.id {
                continue;
            }
            let req = ShardRequest::Apply {
                index,
                records: records.clone(),
            };
            if let Err(e) = self.mesh.call(shard, req).await {
                error!(shard, error = %e, "shard did not apply metadata");
            }
        }
        resp
    }
}

/// Producer ids are persisted a block at a time: one controller-log write per block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

impl Shard {
    /// Hands out a producer id and epoch (controller shard, under the controller lock).
    async fn allocate_producer_id(
        &self,
        existing: Option<(i64, i16)>,
    ) -> Result<(i64, i16), KError> {
        if let Some((id, epoch)) = existing {
            let allocated = (0..self.image.borrow().producer_ids_end).contains(&id);
            if allocated && (0..i16::MAX - 1).contains(&epoch) {
                return Ok((id, epoch + 1));
            }
            if id >= self.image.borrow().producer_ids_end {
                return Err(KError::new(
                    ResponseError::InvalidProducerIdMapping,
                    format!("producer id {id} was never allocated"),
                ));
            }
        }
        let next = self.next_producer_id.get();
        if next >= self.image.borrow().producer_ids_end {
            let records = vec![MetadataRecord::ProducerIdBlock {
                end: next + PRODUCER_ID_BLOCK,
            }];
            let data = serde_json::to_vec(&records)
                .map_err(|e| KError::new(ResponseError::UnknownServerError, e.to_string()))?;
            let index = self
                .store
                .append_controller(data.into())
                .await
                .map_err(|e| KError::new(ResponseError::KafkaStorageError, e.to_string()))?;
            // Only this shard allocates ids; the other shards' images need not know the block.
            self.image.borrow_mut().apply(index, &records);
        }
        self.next_producer_id.set(next + 1);
        Ok((next, 0))
    }
}

/// Serves a request from another shard.
pub async fn handle_shard_request(shard: &Shard, req: ShardRequest) -> ShardResponse {
    match req {
        ShardRequest::Controller(r) => ShardResponse::Controller(
            shard
                .execute_controller(r)
                .instrument(info_span!("controller", shard = shard.id))
                .await,
        ),
        ShardRequest::Apply { index, records } => {
            shard.apply(index, &records).await;
            ShardResponse::Applied
        }
        ShardRequest::Produce { items, wait } => {
            ShardResponse::Produced(crate::data::produce_local(shard, items, wait).await)
        }
        ShardRequest::Fetch { items } => {
            ShardResponse::Fetched(crate::data::fetch_local(shard, items).await)
        }
        ShardRequest::WaitHighWatermark { items, max_wait } => {
            crate::data::wait_local(shard, items, max_wait).await;
            ShardResponse::Woken
        }
        ShardRequest::Group { key, call } => {
            ShardResponse::Group(shard.groups.handle(shard, key, *call).await)
        }
        ShardRequest::DeleteRecords { items } => {
            let mut out = Vec::with_capacity(items.len());
            for (key, offset) in items {
                out.push(match shard.partitions.get(&key) {
                    None => (ResponseError::NotLeaderOrFollower, -1),
                    Some(p) => match p.delete_records(offset).await {
                        Ok(start) => (ResponseError::Unknown(0), start),
                        Err(e) => (e, -1),
                    },
                });
            }
            ShardResponse::Deleted(out)
        }
        ShardRequest::ListOffsets { items } => {
            ShardResponse::Offsets(crate::data::list_offsets_local(shard, items).await)
        }
        ShardRequest::EpochEnds { items } => {
            ShardResponse::EpochEnds(crate::data::epoch_ends_local(shard, items))
        }
    }
}
