//! The simulated nodes' disks: the in-memory store ([`MemDisk`]) or the segment-log adapter
//! over spate-storage's crash-injecting directory ([`FaultyDir`]) and an in-memory metadata
//! store ([`MemMeta`]) — and what the checker may read of either ([`DiskView`]).
//!
//! In segment mode each group's store runs its pump as a future the simulator polls after
//! every event (deterministically, in group order). Its fsyncs pass a gate and its metadata
//! writes are held, both released by the simulator after a simulated latency, so a crash can
//! hit a flush that is written but not synced (a torn tail, with `torn`), or a metadata write
//! not yet durable (a random prefix of them survives).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::future::block_on;
use spate_raft::mem::LogImage;
use spate_raft::segment::{Anchor, SnapshotSource, SyncGate};
use spate_raft::{
    GroupId, HardState, LogEntry, LogStore, MemDisk, MemMeta, NodeId, Prng, SegmentConfig,
    SegmentStore, StoreError,
};
use spate_storage::log::batch::check_first;
use spate_storage::log::faulty::{CrashMode, FaultyDir};
use spate_storage::log::{BatchAt, LogConfig};

/// A segment store of the simulator.
pub type SimSeg = SegmentStore<FaultyDir, MemMeta>;

/// A store's pump, polled by the simulator.
type Pump = Pin<Box<dyn Future<Output = ()>>>;

/// What the checker reads of a node's disk.
pub trait DiskView {
    /// The durable hard state of `g`.
    fn durable_hard_state(&self, g: GroupId) -> HardState;
    /// The last index of `g`'s durable log (`None`: not known right now).
    fn durable_last(&self, g: GroupId) -> Option<u64>;
    /// If `g`'s durable log changed since the last call: the lowest index that may have
    /// changed, and the durable log.
    fn take_changed_durable(&self, g: GroupId) -> Option<(u64, LogImage)>;
    /// The visible (possibly unsynced) log of `g`.
    fn visible_log(&self, g: GroupId) -> LogImage;
    /// Visible entries of `g` from `from` on.
    fn visible_entries_from(&self, g: GroupId, from: u64) -> Vec<LogEntry>;
    /// Number of visible membership entries of `g` after `index`.
    fn membership_entries_after(&self, g: GroupId, index: u64) -> usize;
    /// Entries that arrived inside snapshots.
    fn transferred(&self, g: GroupId) -> Vec<LogEntry>;
}

impl DiskView for MemDisk {
    fn durable_hard_state(&self, g: GroupId) -> HardState {
        MemDisk::durable_hard_state(self, g)
    }

    fn durable_last(&self, g: GroupId) -> Option<u64> {
        let log = self.durable_log(g);
        Some(log.start.index + log.entries.len() as u64)
    }

    fn take_changed_durable(&self, g: GroupId) -> Option<(u64, LogImage)> {
        self.take_changed(g).map(|from| (from, self.durable_log(g)))
    }

    fn visible_log(&self, g: GroupId) -> LogImage {
        MemDisk::visible_log(self, g)
    }

    fn visible_entries_from(&self, g: GroupId, from: u64) -> Vec<LogEntry> {
        MemDisk::visible_entries_from(self, g, from)
    }

    fn membership_entries_after(&self, g: GroupId, index: u64) -> usize {
        MemDisk::visible_entries_from(self, g, index + 1)
            .iter()
            .filter(|e| e.kind.is_membership())
            .count()
    }

    fn transferred(&self, g: GroupId) -> Vec<LogEntry> {
        MemDisk::visible_log(self, g).transferred
    }
}

/// Holds fsyncs until the simulator grants them, in order.
#[derive(Default)]
struct GateState {
    issued: u64,
    granted: u64,
    reported: u64,
    generation: u64,
}

#[derive(Clone, Default)]
struct SimGate(Rc<RefCell<GateState>>);

impl SyncGate for SimGate {
    fn wait(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        let st = Rc::clone(&self.0);
        let mut ticket: Option<(u64, u64)> = None;
        Box::pin(std::future::poll_fn(move |_| {
            let mut s = st.borrow_mut();
            let (t, generation) = *ticket.get_or_insert_with(|| {
                s.issued += 1;
                (s.issued, s.generation)
            });
            if generation == s.generation && t <= s.granted {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }))
    }
}

/// Sync-request keys of a segment node: its log fsync gate and its metadata writes.
const KEY_LOG: u64 = 0;
const KEY_META: u64 = 1;

/// One node's segment-log disk: a directory per group, one metadata store.
pub struct SegDisk {
    dirs: RefCell<BTreeMap<GroupId, FaultyDir>>,
    meta: MemMeta,
    gate: SimGate,
    meta_reported: Cell<u64>,
    stores: RefCell<BTreeMap<GroupId, SimSeg>>,
    pumps: RefCell<BTreeMap<GroupId, Pump>>,
    progress: Rc<Cell<bool>>,
    seen_generation: RefCell<BTreeMap<GroupId, u64>>,
    seed: u64,
    cache_bytes_max: u64,
    checkpoint_bytes: u64,
    /// Chance per poll pass (per million) that a pump is not run (it runs at a later event):
    /// how late the executor gets to a pump, so several Readies' writes meet in one round.
    lag_pm: u64,
    rng: RefCell<Prng>,
    /// Segment transfers: where this node's stores fetch from (see [`SimTransfers`]).
    source: RefCell<Option<Rc<dyn SnapshotSource>>>,
    net: RefCell<Option<Rc<SimTransfers>>>,
    /// Transfer counters of the stores closed by crashes: (installed, failed).
    closed_transfers: Cell<(u64, u64)>,
    /// Per group: transfer installs already checked.
    checked_installs: RefCell<BTreeMap<GroupId, u64>>,
}

/// The simulator's segment-transfer network: every node's stores, by (node, group), and the
/// blocked node pairs; fetches fail when the nodes cannot talk (partitioned, crashed) or at
/// random, and take a few pump polls. Records every batch served, by place: the global record
/// the transfer invariants compare follower logs with.
pub struct SimTransfers {
    disks: RefCell<BTreeMap<NodeId, std::rc::Weak<SegDisk>>>,
    pub blocked: RefCell<std::collections::BTreeSet<(NodeId, NodeId)>>,
    rng: RefCell<Prng>,
    /// Chance (per million) that a fetch fails.
    fail_pm: u64,
    /// (group, base offset, zero-width, epoch) -> batch bytes.
    served: RefCell<BTreeMap<(GroupId, u64, bool, i32), Bytes>>,
    pub violation: RefCell<Option<String>>,
    pub fetches: Cell<u64>,
}

impl SimTransfers {
    pub fn new(seed: u64) -> Rc<SimTransfers> {
        let mut rng = Prng::new(seed ^ 0x7a45);
        let fail_pm = [0, 20_000, 200_000][rng.below(3) as usize];
        Rc::new(SimTransfers {
            disks: RefCell::default(),
            blocked: RefCell::default(),
            rng: RefCell::new(rng),
            fail_pm,
            served: RefCell::default(),
            violation: RefCell::default(),
            fetches: Cell::new(0),
        })
    }

    fn reachable(&self, a: NodeId, b: NodeId, g: GroupId) -> Option<SimSeg> {
        let blocked = self.blocked.borrow();
        if blocked.contains(&(a, b)) || blocked.contains(&(b, a)) {
            return None;
        }
        self.disks.borrow().get(&b)?.upgrade()?.store(g)
    }

    fn record(&self, g: GroupId, bytes: &Bytes) {
        let mut rest = bytes.clone();
        while !rest.is_empty() {
            let Ok(h) = check_first(&rest, 1 << 30) else {
                return;
            };
            let b = rest.split_to(h.total_len());
            let key = (
                g,
                h.base_offset as u64,
                h.is_zero_width(),
                if h.is_zero_width() {
                    h.partition_leader_epoch
                } else {
                    0
                },
            );
            let mut served = self.served.borrow_mut();
            match served.get(&key) {
                Some(old) if *old != b => {
                    self.violation.borrow_mut().get_or_insert(format!(
                        "group {g}: two different batches served at offset {}",
                        h.base_offset
                    ));
                }
                Some(_) => {}
                None => {
                    served.insert(key, b);
                }
            }
        }
    }

    /// Checks `store`'s Kafka log from its start up to the place after `anchor`: whole,
    /// contiguous batches ending exactly there; each batch byte-identical to the one served
    /// at its place, if any was (`all_served`: every one must have been).
    fn check_log(
        &self,
        g: GroupId,
        store: &SimSeg,
        anchor: Anchor,
        all_served: bool,
    ) -> Result<(), String> {
        let min_epoch = i64::try_from(anchor.term).unwrap_or(i64::MAX) + i64::from(anchor.noop);
        let end = BatchAt {
            offset: anchor.offset,
            min_epoch,
        };
        let Some(start) = store.with_log(|l| l.log_start_offset()) else {
            return Ok(());
        };
        let mut at = BatchAt::offset(start);
        let mut next: Option<u64> = None;
        loop {
            let Some(plan) = store.with_log(|l| l.plan_read_at(at, 1 << 16)) else {
                return Ok(());
            };
            let run =
                block_on(plan.map_err(|e| e.to_string())?.run()).map_err(|e| e.to_string())?;
            if run.bytes.is_empty() {
                break;
            }
            at = run.next;
            let mut rest = run.bytes;
            let mut past = false;
            while !rest.is_empty() {
                let h = check_first(&rest, 1 << 30).map_err(|e| e.to_string())?;
                let b = rest.split_to(h.total_len());
                if !end.skips(&h) {
                    past = true;
                    break;
                }
                if let Some(n) = next {
                    if h.base_offset as u64 != n {
                        return Err(format!(
                            "batch at offset {} where the log continues at {n}",
                            h.base_offset
                        ));
                    }
                }
                next = Some(h.next_offset() as u64);
                let key = (
                    g,
                    h.base_offset as u64,
                    h.is_zero_width(),
                    if h.is_zero_width() {
                        h.partition_leader_epoch
                    } else {
                        0
                    },
                );
                match self.served.borrow().get(&key) {
                    Some(s) if *s != b => {
                        return Err(format!(
                            "batch at offset {} (epoch {}) differs from the one transferred",
                            h.base_offset, h.partition_leader_epoch
                        ))
                    }
                    None if all_served => {
                        return Err(format!(
                            "batch at offset {} (epoch {}) was never transferred",
                            h.base_offset, h.partition_leader_epoch
                        ))
                    }
                    _ => {}
                }
            }
            if past {
                break;
            }
        }
        let reached = next.unwrap_or(start);
        if reached != anchor.offset {
            return Err(format!(
                "the log below the anchor ends at offset {reached}, not at {}",
                anchor.offset
            ));
        }
        Ok(())
    }
}

/// One node's view of [`SimTransfers`].
struct SimSource {
    me: NodeId,
    net: Rc<SimTransfers>,
}

impl SnapshotSource for SimSource {
    fn fetch(
        &self,
        from: NodeId,
        group: GroupId,
        at: BatchAt,
        end: BatchAt,
        max_bytes: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, StoreError>>>> {
        let net = Rc::clone(&self.net);
        let me = self.me;
        let (mut polls, fail) = {
            let mut rng = net.rng.borrow_mut();
            (rng.below(4), rng.chance(net.fail_pm))
        };
        net.fetches.set(net.fetches.get() + 1);
        Box::pin(async move {
            // A few pump polls of latency; the nodes must still reach each other at the end.
            std::future::poll_fn(|_| {
                if polls == 0 {
                    Poll::Ready(())
                } else {
                    polls -= 1;
                    Poll::Pending
                }
            })
            .await;
            if fail {
                return Err(StoreError::Io("simulated transfer failure".into()));
            }
            let store = net
                .reachable(me, from, group)
                .ok_or_else(|| StoreError::Io(format!("node {from} unreachable")))?;
            let bytes = store.serve_transfer(at, end, max_bytes).await?;
            net.record(group, &bytes);
            Ok(bytes)
        })
    }
}

impl SegDisk {
    /// Connects this node's stores to the transfer network (from their next open).
    pub fn attach(self: &Rc<Self>, me: NodeId, net: &Rc<SimTransfers>) {
        net.disks.borrow_mut().insert(me, Rc::downgrade(self));
        *self.net.borrow_mut() = Some(Rc::clone(net));
        *self.source.borrow_mut() = Some(Rc::new(SimSource {
            me,
            net: Rc::clone(net),
        }));
    }

    /// Transfer counters: (installed, failed), over every store this node opened.
    pub fn transfer_counts(&self) -> (u64, u64) {
        let (mut i, mut f) = self.closed_transfers.get();
        for s in self.stores.borrow().values() {
            let st = s.transfer_stats();
            i += st.installed;
            f += st.failed;
        }
        (i, f)
    }

    /// The transfer invariants for the stores that installed a snapshot from transferred
    /// data since the last call: their log below the anchor is exactly what was served.
    pub fn check_transfers(&self, net: &SimTransfers) -> Result<(), String> {
        for (g, s) in self.stores.borrow().iter() {
            let n = s.transfer_stats().installed;
            if self.checked_installs.borrow().get(g).copied().unwrap_or(0) >= n {
                continue;
            }
            self.checked_installs.borrow_mut().insert(*g, n);
            if let Some((anchor, _)) = s.last_transfer_installed() {
                if s.anchor().index == anchor.index {
                    net.check_log(*g, s, anchor, true)
                        .map_err(|e| format!("group {g} after a transfer: {e}"))?;
                }
            }
        }
        Ok(())
    }
}

impl SegDisk {
    fn new(seed: u64, cache_bytes_max: u64, checkpoint_bytes: u64, lag_pm: u64) -> SegDisk {
        SegDisk {
            dirs: RefCell::default(),
            meta: MemMeta::held(),
            gate: SimGate::default(),
            meta_reported: Cell::new(0),
            stores: RefCell::default(),
            pumps: RefCell::default(),
            progress: Rc::default(),
            seen_generation: RefCell::default(),
            seed,
            cache_bytes_max,
            checkpoint_bytes,
            lag_pm,
            rng: RefCell::new(Prng::new(seed ^ 0x1a6)),
            source: RefCell::default(),
            net: RefCell::default(),
            closed_transfers: Cell::new((0, 0)),
            checked_installs: RefCell::default(),
        }
    }

    fn config(&self) -> SegmentConfig {
        let progress = Rc::clone(&self.progress);
        SegmentConfig {
            log: LogConfig {
                // Small segments: rolls, multi-segment reads and prefix deletion happen.
                segment_bytes: 4096,
                ..LogConfig::default()
            },
            cache_bytes_max: self.cache_bytes_max,
            load_bytes_max: 2048,
            checkpoint_bytes: self.checkpoint_bytes,
            scan_bytes: 4096,
            on_progress: Some(Rc::new(move |_| progress.set(true))),
            sync_gate: Some(Rc::new(self.gate.clone())),
            // No timer: a full disk or a truncation refused during a compaction fails the
            // store (neither happens in the simulator).
            sleep: None,
            on_fsync: None,
            // Both compaction modes, by seed parity (no draw: seeds replay as before).
            compaction_keeps_data: self.seed % 2 == 1,
            snapshot_source: self.source.borrow().clone(),
            // Small chunks: a transfer takes several fetches.
            transfer_chunk_bytes: 1024,
        }
    }

    fn open(&self, g: GroupId) -> Result<SimSeg, String> {
        let dir = self
            .dirs
            .borrow_mut()
            .entry(g)
            .or_insert_with(|| FaultyDir::new(self.seed ^ g.rotate_left(17)))
            .clone();
        // Opening may finish an interrupted snapshot installation with a metadata write.
        self.meta.set_hold(false);
        let opened = block_on(SegmentStore::open(
            g,
            dir,
            self.config(),
            self.meta.state(g),
            self.meta.clone(),
        ));
        self.meta.set_hold(true);
        let store = opened.map_err(|e| e.to_string())?;
        // After a crash at any point of a transfer: the old log or the complete new one —
        // whatever lies below the anchor is whole, contiguous and, where it was transferred,
        // byte-identical to what was served.
        if let Some(net) = self.net.borrow().clone() {
            net.check_log(g, &store, store.anchor(), false)
                .map_err(|e| format!("after reopening: {e}"))?;
        }
        self.stores.borrow_mut().insert(g, store.clone());
        self.pumps.borrow_mut().insert(g, Box::pin(store.pump()));
        self.seen_generation.borrow_mut().remove(&g);
        Ok(store)
    }

    fn store(&self, g: GroupId) -> Option<SimSeg> {
        self.stores.borrow().get(&g).cloned()
    }

    /// Polls every pump once; whether any completed work (then the driver must process).
    fn poll(&self) -> bool {
        self.progress.set(false);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for pump in self.pumps.borrow_mut().values_mut() {
            if self.rng.borrow_mut().chance(self.lag_pm) {
                continue;
            }
            let _ = pump.as_mut().poll(&mut cx);
        }
        self.progress.get()
    }

    fn crash(&self, rng: &mut Prng, torn: bool) {
        let (i, f) = self.transfer_counts();
        self.closed_transfers.set((i, f));
        self.checked_installs.borrow_mut().clear();
        self.pumps.borrow_mut().clear();
        self.stores.borrow_mut().clear();
        let mode = if torn {
            CrashMode::TearLastWrite
        } else {
            CrashMode::DropUnsynced
        };
        for dir in self.dirs.borrow().values() {
            dir.crash(mode);
        }
        self.meta.crash(rng);
        self.meta_reported.set(self.meta.issued());
        let mut g = self.gate.0.borrow_mut();
        g.generation += 1;
        g.granted = g.issued;
        g.reported = g.issued;
    }

    fn take_sync_requests(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        {
            let mut g = self.gate.0.borrow_mut();
            for t in g.reported + 1..=g.issued {
                out.push((KEY_LOG, t));
            }
            g.reported = g.issued;
        }
        let issued = self.meta.issued();
        for s in self.meta_reported.get() + 1..=issued {
            out.push((KEY_META, s));
        }
        self.meta_reported.set(issued);
        out
    }

    fn complete_sync(&self, key: u64, ticket: u64) {
        if key == KEY_LOG {
            let mut g = self.gate.0.borrow_mut();
            g.granted = g.granted.max(ticket);
        } else {
            self.meta.release_through(ticket);
        }
    }

    fn read(&self, g: GroupId, lo: u64, hi: u64) -> Vec<LogEntry> {
        let Some(s) = self.store(g) else {
            return Vec::new();
        };
        if lo >= hi {
            return Vec::new();
        }
        block_on(s.read_entries(lo, hi)).unwrap_or_else(|e| {
            panic!("group {g}: cannot read entries {lo}..{hi}: {e}");
        })
    }
}

impl DiskView for SegDisk {
    fn durable_hard_state(&self, g: GroupId) -> HardState {
        self.meta
            .state(g)
            .hard_state
            .map_or(HardState::default(), |h| HardState {
                term: h.term,
                vote: h.vote,
                commit: h.commit,
            })
    }

    fn durable_last(&self, g: GroupId) -> Option<u64> {
        Some(self.store(g)?.durable_last_index())
    }

    fn take_changed_durable(&self, g: GroupId) -> Option<(u64, LogImage)> {
        let s = self.store(g)?;
        let generation = s.durable_generation();
        if self.seen_generation.borrow().get(&g) == Some(&generation) {
            return None;
        }
        let last = s.durable_view_last_index()?;
        self.seen_generation.borrow_mut().insert(g, generation);
        let start = s.log_start();
        let entries = self.read(g, start.index + 1, last + 1);
        Some((
            start.index + 1,
            LogImage {
                start,
                entries,
                ..LogImage::default()
            },
        ))
    }

    fn visible_log(&self, g: GroupId) -> LogImage {
        let Some(s) = self.store(g) else {
            return LogImage::default();
        };
        let start = s.log_start();
        LogImage {
            start,
            entries: self.read(g, start.index + 1, s.last_index() + 1),
            ..LogImage::default()
        }
    }

    fn visible_entries_from(&self, g: GroupId, from: u64) -> Vec<LogEntry> {
        let Some(s) = self.store(g) else {
            return Vec::new();
        };
        self.read(g, from.max(s.first_index()), s.last_index() + 1)
    }

    fn membership_entries_after(&self, g: GroupId, index: u64) -> usize {
        self.store(g)
            .and_then(|s| s.membership_indexes(index).ok())
            .map_or(0, |v| v.len())
    }

    fn transferred(&self, _g: GroupId) -> Vec<LogEntry> {
        // Segment transfer is not implemented: a snapshot carries only the offset.
        Vec::new()
    }
}

/// A node's disk in the simulator.
#[derive(Clone)]
pub enum SimDisk {
    Mem(MemDisk),
    Seg(Rc<SegDisk>),
}

impl SimDisk {
    pub fn mem() -> SimDisk {
        SimDisk::Mem(MemDisk::new())
    }

    pub fn segment(seed: u64, cache_bytes_max: u64, checkpoint_bytes: u64, lag_pm: u64) -> SimDisk {
        SimDisk::Seg(Rc::new(SegDisk::new(
            seed,
            cache_bytes_max,
            checkpoint_bytes,
            lag_pm,
        )))
    }

    /// Opens `g`'s store (after a start or a restart).
    pub fn store(&self, g: GroupId) -> Result<Box<dyn LogStore>, String> {
        match self {
            SimDisk::Mem(d) => Ok(Box::new(d.store(g))),
            SimDisk::Seg(d) => Ok(Box::new(d.open(g)?)),
        }
    }

    /// Runs the stores' background work; whether any completed some.
    pub fn poll(&self) -> bool {
        match self {
            SimDisk::Mem(_) => false,
            SimDisk::Seg(d) => d.poll(),
        }
    }

    pub fn crash(&self, rng: &mut Prng, torn: bool) {
        match self {
            SimDisk::Mem(d) => d.crash(rng, torn),
            SimDisk::Seg(d) => d.crash(rng, torn),
        }
    }

    /// New sync requests `(key, ticket)`: tickets of one key complete in order.
    pub fn take_sync_requests(&self) -> Vec<(u64, u64)> {
        match self {
            SimDisk::Mem(d) => d.take_sync_requests(),
            SimDisk::Seg(d) => d.take_sync_requests(),
        }
    }

    pub fn complete_sync(&self, key: u64, ticket: u64) {
        match self {
            SimDisk::Mem(d) => d.complete_sync(key, ticket),
            SimDisk::Seg(d) => d.complete_sync(key, ticket),
        }
    }

    /// Connects a segment node to the transfer network.
    pub fn attach(&self, me: NodeId, net: &Rc<SimTransfers>) {
        if let SimDisk::Seg(d) = self {
            d.attach(me, net);
        }
    }

    /// Segment transfers (installed, failed) over every store this node opened.
    pub fn transfer_counts(&self) -> (u64, u64) {
        match self {
            SimDisk::Mem(_) => (0, 0),
            SimDisk::Seg(d) => d.transfer_counts(),
        }
    }

    /// See [`SegDisk::check_transfers`].
    pub fn check_transfers(&self, net: &SimTransfers) -> Result<(), String> {
        match self {
            SimDisk::Mem(_) => Ok(()),
            SimDisk::Seg(d) => d.check_transfers(net),
        }
    }

    /// Asynchronous loads the open stores completed (segment mode).
    pub fn loads(&self) -> u64 {
        match self {
            SimDisk::Mem(_) => 0,
            SimDisk::Seg(d) => d
                .stores
                .borrow()
                .values()
                .map(|s| s.loads_completed())
                .sum(),
        }
    }

    pub fn view(&self) -> &dyn DiskView {
        match self {
            SimDisk::Mem(d) => d,
            SimDisk::Seg(d) => &**d,
        }
    }
}

/// What identifies a proposal in a delivered entry: the payload, except that the segment
/// log stamps base offset and leader epoch into a batch's header, so a batch is identified
/// by its bytes from the attributes on (CRC-covered, unique per proposal).
pub fn proposal_key(payload: &Bytes) -> Bytes {
    if payload.len() > 61 && payload[16] == 2 {
        payload.slice(21..)
    } else {
        payload.clone()
    }
}
