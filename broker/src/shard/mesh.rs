//! Cross-shard request/response over glommio's channel mesh.
//!
//! glommio gives a full mesh of bounded SPSC queues; we add an envelope with a correlation id
//! and replies on the reverse queue. glommio's senders panic when two tasks send on one queue at
//! once, so every outgoing queue has exactly one owning *pump* task fed by a local bounded
//! queue; any task may call [`Mesh::call`].
//!
//! Peer ids are glommio's (sorted executor ids), and they are what Spate calls shard ids.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use tracing::{debug, warn};

use super::{handle_shard_request, Shard, ShardRequest, ShardResponse};
use crate::limits::MESH_QUEUE_MAX;

/// What travels on the mesh.
pub enum MeshMsg {
    Request { corr: u64, body: ShardRequest },
    Response { corr: u64, body: ShardResponse },
}

pub type MeshBuilderT = MeshBuilder<MeshMsg, Full>;

pub fn builder(nr_shards: usize) -> MeshBuilderT {
    MeshBuilder::full(nr_shards, MESH_QUEUE_MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("shard {0} does not exist")]
    NoSuchShard(usize),
    #[error("shard {0} is not reachable (shutting down)")]
    Unreachable(usize),
}

/// This shard's end of the mesh.
pub struct Mesh {
    me: usize,
    nr_shards: usize,
    outboxes: Vec<Option<LocalSender<MeshMsg>>>,
    pending: RefCell<HashMap<u64, LocalSender<ShardResponse>>>,
    next_corr: Cell<u64>,
}

/// The glommio halves, consumed by [`start`].
pub struct MeshIo {
    senders: Senders<MeshMsg>,
    receivers: Receivers<MeshMsg>,
    outbox_rx: Vec<Option<local_channel::LocalReceiver<MeshMsg>>>,
}

/// Joins the mesh (every shard must call this) and returns this shard's id and its end.
pub async fn join(builder: MeshBuilderT) -> anyhow::Result<(usize, Mesh, MeshIo)> {
    let (senders, receivers) = builder
        .join()
        .await
        .map_err(|_| anyhow::anyhow!("joining the shard mesh failed"))?;
    let me = senders.peer_id();
    let nr_shards = senders.nr_consumers();
    let mut outboxes = Vec::with_capacity(nr_shards);
    let mut outbox_rx = Vec::with_capacity(nr_shards);
    for peer in 0..nr_shards {
        if peer == me {
            outboxes.push(None);
            outbox_rx.push(None);
        } else {
            let (tx, rx) = local_channel::new_bounded(MESH_QUEUE_MAX);
            outboxes.push(Some(tx));
            outbox_rx.push(Some(rx));
        }
    }
    Ok((
        me,
        Mesh {
            me,
            nr_shards,
            outboxes,
            pending: RefCell::new(HashMap::new()),
            next_corr: Cell::new(1),
        },
        MeshIo {
            senders,
            receivers,
            outbox_rx,
        },
    ))
}

impl Mesh {
    pub fn shard_id(&self) -> usize {
        self.me
    }

    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// Requests sent to other shards still awaiting their answer.
    pub fn pending(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Sends `req` to shard `to` and awaits its response.
    pub async fn call(&self, to: usize, req: ShardRequest) -> Result<ShardResponse, MeshError> {
        let outbox = self
            .outboxes
            .get(to)
            .ok_or(MeshError::NoSuchShard(to))?
            .as_ref()
            .ok_or(MeshError::NoSuchShard(to))?;
        let corr = self.next_corr.get();
        self.next_corr.set(corr + 1);
        let (tx, rx) = local_channel::new_bounded(1);
        self.pending.borrow_mut().insert(corr, tx);
        if outbox
            .send(MeshMsg::Request { corr, body: req })
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&corr);
            return Err(MeshError::Unreachable(to));
        }
        rx.recv().await.ok_or(MeshError::Unreachable(to))
    }

    async fn reply(&self, to: usize, corr: u64, body: ShardResponse) {
        if let Some(Some(outbox)) = self.outboxes.get(to) {
            if outbox.send(MeshMsg::Response { corr, body }).await.is_err() {
                debug!(to, corr, "reply dropped: shard unreachable");
            }
        }
    }

    fn complete(&self, corr: u64, body: ShardResponse) {
        match self.pending.borrow_mut().remove(&corr) {
            Some(tx) => {
                let _ = tx.try_send(body);
            }
            None => warn!(corr, "response for an unknown correlation id"),
        }
    }
}

/// Starts the pump and receive tasks of `shard`'s mesh end.
pub fn start(shard: Rc<Shard>, io: MeshIo) {
    let senders = Rc::new(io.senders);
    for (peer, rx) in io.outbox_rx.into_iter().enumerate() {
        let Some(rx) = rx else { continue };
        let senders = senders.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                if senders.send_to(peer, msg).await.is_err() {
                    debug!(peer, "mesh peer closed; pump stops");
                    break;
                }
            }
        })
        .detach();
    }
    let receivers = Rc::new(io.receivers);
    for peer in 0..shard.mesh.nr_shards {
        if peer == shard.mesh.me {
            continue;
        }
        let receivers = receivers.clone();
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Ok(Some(msg)) = receivers.recv_from(peer).await {
                match msg {
                    MeshMsg::Request { corr, body } => {
                        let shard = shard.clone();
                        glommio::spawn_local(async move {
                            let resp = handle_shard_request(&shard, body).await;
                            shard.mesh.reply(peer, corr, resp).await;
                        })
                        .detach();
                    }
                    MeshMsg::Response { corr, body } => shard.mesh.complete(corr, body),
                }
            }
        })
        .detach();
    }
}
