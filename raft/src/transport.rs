//! The transport seam: how a driver hands an envelope to the node-to-node RPC layer.
//!
//! Sending is fire-and-forget, like the network it models: the transport may drop, delay,
//! duplicate or reorder envelopes and Raft copes. The receiving side calls
//! [`crate::Driver::receive`] with the bytes.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;

use crate::types::NodeId;

/// Sends encoded [`crate::wire::Envelope`]s to peer nodes.
pub trait Transport {
    /// Queues `envelope` for node `to`. Must not block.
    fn send(&mut self, to: NodeId, envelope: Bytes);
}

/// One envelope in flight on a [`MemNetwork`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// Sender node.
    pub from: NodeId,
    /// Destination node.
    pub to: NodeId,
    /// The encoded envelope.
    pub bytes: Bytes,
}

/// An in-memory network: every endpoint appends to one shared outbox that a test (or the
/// simulator) drains and delivers however it likes.
#[derive(Clone, Default)]
pub struct MemNetwork {
    outbox: Rc<RefCell<Vec<Sent>>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        MemNetwork::default()
    }

    /// The transport node `node` sends through.
    pub fn endpoint(&self, node: NodeId) -> MemTransport {
        MemTransport {
            node,
            outbox: Rc::clone(&self.outbox),
        }
    }

    /// Takes every envelope sent since the last call, in send order.
    pub fn take_sent(&self) -> Vec<Sent> {
        std::mem::take(&mut *self.outbox.borrow_mut())
    }
}

/// A [`Transport`] endpoint of a [`MemNetwork`].
pub struct MemTransport {
    node: NodeId,
    outbox: Rc<RefCell<Vec<Sent>>>,
}

impl Transport for MemTransport {
    fn send(&mut self, to: NodeId, envelope: Bytes) {
        self.outbox.borrow_mut().push(Sent {
            from: self.node,
            to,
            bytes: envelope,
        });
    }
}
