//! A shard: one core's complete little broker (see ARCHITECTURE.md).
//!
//! Lives on every core, one per glommio executor. Holds that core's copy of the metadata
//! image, its end of the shard mesh, its connections; shard 0 also runs the controller.

pub mod mesh;

use std::cell::{Cell, RefCell};

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
use mesh::Mesh;

/// The shard that runs the controller.
pub const CONTROLLER_SHARD: usize = 0;

/// Requests one shard sends another.
pub enum ShardRequest {
    /// A metadata change, for the controller shard.
    Controller(ControllerRequest),
    /// A committed controller-log entry to apply to this shard's image.
    Apply {
        index: u64,
        records: Vec<MetadataRecord>,
    },
}

pub enum ShardResponse {
    Controller(ControllerResponse),
    Applied,
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
}

impl Shard {
    pub fn new(config: Config, image: MetadataImage, mesh: Mesh, store: MetaStore) -> Shard {
        Shard {
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
            Ok(ShardResponse::Applied) => Err(KError::new(
                ResponseError::UnknownServerError,
                "controller answered with the wrong response type",
            )),
            Err(e) => Err(KError::new(ResponseError::NotController, e.to_string())),
        }
    }

    async fn execute_controller(&self, req: ControllerRequest) -> ControllerResponse {
        let _permit = self.controller_lock.acquire_permit(1).await;
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
        self.image.borrow_mut().apply(index, &records);
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
            shard.image.borrow_mut().apply(index, &records);
            ShardResponse::Applied
        }
    }
}
