//! Where the segment-log adapter keeps a group's small metadata: the node's metadata store
//! ([`spate_storage::metastore::MetaStore`], raft-engine on its own thread), or an in-memory
//! stand-in ([`MemMeta`]) whose unacknowledged writes a simulated crash may lose.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::task::{Poll, Waker};

use spate_storage::metastore::{GroupState, GroupWrite, MetaStore};

use crate::rng::Prng;
use crate::store::StoreError;
use crate::types::GroupId;

/// Durable per-group metadata writes. A write is durable when its future resolves; writes of
/// one group resolve (and survive crashes) in the order they were first polled.
pub trait MetaIo: Clone {
    /// Applies `write` to `group`'s metadata atomically.
    fn write(
        &self,
        group: GroupId,
        write: GroupWrite,
    ) -> impl Future<Output = Result<(), StoreError>>;
}

impl MetaIo for MetaStore {
    fn write(
        &self,
        group: GroupId,
        write: GroupWrite,
    ) -> impl Future<Output = Result<(), StoreError>> {
        let store = self.clone();
        async move {
            store
                .write_group(group, write)
                .await
                .map_err(|e| StoreError::Io(e.to_string()))
        }
    }
}

#[derive(Default)]
struct MemMetaInner {
    durable: BTreeMap<GroupId, GroupState>,
    /// Issued, not yet acknowledged: (sequence, group, write).
    pending: VecDeque<(u64, GroupId, GroupWrite)>,
    issued: u64,
    /// Writes with a sequence up to this are durable.
    released: u64,
    /// Writes wait for [`MemMeta::release_through`] instead of completing at once.
    hold: bool,
    wakers: Vec<Waker>,
    /// Bumped by a crash: writes issued before it never complete.
    generation: u64,
    writes: u64,
}

/// An in-memory [`MetaIo`] (tests, the simulator, benchmarks). Clones share the state.
#[derive(Clone, Default)]
pub struct MemMeta {
    inner: Rc<RefCell<MemMetaInner>>,
}

impl MemMeta {
    /// A store whose writes are durable as soon as they are issued.
    pub fn new() -> Self {
        MemMeta::default()
    }

    /// A store whose writes wait for [`MemMeta::release_through`] (simulated fsync latency).
    pub fn held() -> Self {
        let m = MemMeta::default();
        m.inner.borrow_mut().hold = true;
        m
    }

    /// The durable metadata of `group`.
    pub fn state(&self, group: GroupId) -> GroupState {
        self.inner
            .borrow()
            .durable
            .get(&group)
            .cloned()
            .unwrap_or_default()
    }

    /// Sequence number of the last write issued.
    pub fn issued(&self) -> u64 {
        self.inner.borrow().issued
    }

    /// Number of writes issued so far.
    pub fn writes(&self) -> u64 {
        self.inner.borrow().writes
    }

    /// Makes every write issued up to `seq` durable and completes it.
    pub fn release_through(&self, seq: u64) {
        let wakers = {
            let mut m = self.inner.borrow_mut();
            while let Some((s, _, _)) = m.pending.front() {
                if *s > seq {
                    break;
                }
                if let Some((_, g, w)) = m.pending.pop_front() {
                    w.apply_to(m.durable.entry(g).or_default());
                }
            }
            m.released = m.released.max(seq);
            std::mem::take(&mut m.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// Whether writes wait for [`MemMeta::release_through`].
    pub fn set_hold(&self, hold: bool) {
        self.inner.borrow_mut().hold = hold;
    }

    /// Simulates a crash: a random prefix of the unacknowledged writes survives, the rest is
    /// lost, and their futures never complete.
    pub fn crash(&self, rng: &mut Prng) {
        let n = self.inner.borrow().pending.len() as u64;
        let keep = rng.below(n + 1) as usize;
        self.crash_keeping(keep);
    }

    /// Simulates a crash that loses every unacknowledged write.
    pub fn crash_losing_unacknowledged(&self) {
        self.crash_keeping(0);
    }

    fn crash_keeping(&self, keep: usize) {
        let mut m = self.inner.borrow_mut();
        let kept: Vec<_> = m.pending.drain(..).take(keep).collect();
        for (_, g, w) in kept {
            w.apply_to(m.durable.entry(g).or_default());
        }
        m.released = m.issued;
        m.generation += 1;
        m.wakers.clear();
    }
}

impl MetaIo for MemMeta {
    fn write(
        &self,
        group: GroupId,
        write: GroupWrite,
    ) -> impl Future<Output = Result<(), StoreError>> {
        let inner = Rc::clone(&self.inner);
        let mut ticket: Option<(u64, u64)> = None;
        std::future::poll_fn(move |cx| {
            let mut m = inner.borrow_mut();
            let (seq, generation) = match ticket {
                Some(t) => t,
                None => {
                    m.issued += 1;
                    m.writes += 1;
                    let seq = m.issued;
                    if m.hold {
                        m.pending.push_back((seq, group, write.clone()));
                    } else {
                        write.apply_to(m.durable.entry(group).or_default());
                        m.released = seq;
                    }
                    ticket = Some((seq, m.generation));
                    (seq, m.generation)
                }
            };
            if generation != m.generation {
                // Lost in a crash: never completes (the node is gone).
                return Poll::Pending;
            }
            if seq <= m.released {
                Poll::Ready(Ok(()))
            } else {
                m.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}
