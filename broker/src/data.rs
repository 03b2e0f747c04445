//! The data path between a connection's shard and the partitions' owning shards: produce,
//! fetch, long-poll waits and offset lookups, batched per destination shard.
//!
//! `*_local` functions run on the owning shard; the others run on the connection's shard and
//! fan out over the mesh (or call the local function directly when the owner is this shard).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use tracing::warn;

use crate::partition::PartitionKey;
use crate::shard::{
    FetchItem, FetchOutcome, ProduceItem, ProduceOutcome, Shard, ShardRequest, ShardResponse,
};

/// Appends on the owning shard, in request order; with `wait`, answers once every appended
/// batch is durable.
pub async fn produce_local(
    shard: &Shard,
    items: Vec<ProduceItem>,
    wait: bool,
) -> Vec<ProduceOutcome> {
    let mut out = Vec::with_capacity(items.len());
    let mut waiters = Vec::new();
    for item in items {
        let Some(p) = shard.partitions.get(&item.key) else {
            out.push(ProduceOutcome {
                error: ResponseError::NotLeaderOrFollower,
                base_offset: -1,
                log_start_offset: -1,
            });
            waiters.push(None);
            continue;
        };
        let len = item.batch.len() as u64;
        match p.append(&item.batch) {
            Ok((base_offset, waiter)) => {
                shard.metrics.produce_bytes.inc_by(len);
                p.metrics.produce_bytes.inc_by(len);
                out.push(ProduceOutcome {
                    error: ResponseError::Unknown(0),
                    base_offset,
                    log_start_offset: p.log_start_offset(),
                });
                waiters.push(Some(waiter));
            }
            Err((error, why)) => {
                if error == ResponseError::KafkaStorageError {
                    warn!(topic = %p.topic, partition = item.key.1, error = %why, "append failed");
                }
                out.push(ProduceOutcome {
                    error,
                    base_offset: -1,
                    log_start_offset: -1,
                });
                waiters.push(None);
            }
        }
    }
    if wait {
        for (o, w) in out.iter_mut().zip(waiters) {
            if let Some(w) = w {
                if let Err(e) = w.await {
                    warn!(error = %e, "batch did not become durable");
                    o.error = ResponseError::KafkaStorageError;
                    o.base_offset = -1;
                }
            }
        }
    }
    out
}

/// Reads on the owning shard; a partition gets at least one batch while nothing has been
/// read yet (Kafka's rule, so a large batch cannot block a consumer).
pub async fn fetch_local(shard: &Shard, items: Vec<FetchItem>) -> Vec<FetchOutcome> {
    let mut out = Vec::with_capacity(items.len());
    let mut any = false;
    for item in items {
        let Some(p) = shard.partitions.get(&item.key) else {
            out.push(FetchOutcome {
                error: ResponseError::NotLeaderOrFollower,
                high_watermark: -1,
                log_start_offset: -1,
                records: Default::default(),
            });
            continue;
        };
        let (start, hw, end) = (p.log_start_offset(), p.high_watermark(), p.log_end_offset());
        if item.offset < start || item.offset > end {
            // Kafka reports no offsets with OFFSET_OUT_OF_RANGE.
            out.push(FetchOutcome {
                error: ResponseError::OffsetOutOfRange,
                high_watermark: -1,
                log_start_offset: -1,
                records: Default::default(),
            });
            continue;
        }
        let (error, records) = match p.read(item.offset, item.max_bytes, !any).await {
            Ok(r) => (ResponseError::Unknown(0), r),
            // The first batch at the offset is damaged on disk (logged and counted once by
            // the partition). Kafka answers a CorruptRecordException on read with
            // CORRUPT_MESSAGE and unknown (-1) offsets, like any failed partition read.
            Err(e) if e.is_corrupt() => {
                out.push(FetchOutcome {
                    error: ResponseError::CorruptMessage,
                    high_watermark: -1,
                    log_start_offset: -1,
                    records: Default::default(),
                });
                continue;
            }
            Err(e) => {
                warn!(topic = %p.topic, partition = item.key.1, error = %e, "read failed");
                (ResponseError::KafkaStorageError, Default::default())
            }
        };
        any |= !records.is_empty();
        shard.metrics.fetch_bytes.inc_by(records.len() as u64);
        p.metrics.fetch_bytes.inc_by(records.len() as u64);
        out.push(FetchOutcome {
            error,
            high_watermark: hw,
            log_start_offset: start,
            records,
        });
    }
    out
}

/// Parks on the owning shard until one of the partitions' high watermark passes the given
/// value, or `max_wait` elapses.
pub async fn wait_local(shard: &Shard, items: Vec<(PartitionKey, i64)>, max_wait: Duration) {
    let parts: Vec<_> = items
        .iter()
        .filter_map(|(k, hw)| shard.partitions.get(k).map(|p| (p, *hw)))
        .collect();
    if parts.is_empty() {
        return;
    }
    let any_moved = async {
        let (tx, rx) = glommio::channels::local_channel::new_bounded::<()>(1);
        let tx = Rc::new(tx);
        let tasks: Vec<_> = parts
            .into_iter()
            .map(|(p, hw)| {
                let tx = tx.clone();
                glommio::spawn_local(async move {
                    p.wait_hw_above(hw).await;
                    let _ = tx.try_send(());
                })
            })
            .collect();
        let _ = rx.recv().await;
        drop(tasks);
    };
    let _ = glommio::timer::timeout(max_wait, async {
        any_moved.await;
        Ok(())
    })
    .await;
}

/// ListOffsets' special timestamps (KIP-734, KIP-1005): the record with the largest
/// timestamp, the earliest local offset (= earliest: no tiered storage), the latest tiered
/// offset (none: -1).
pub const MAX_TIMESTAMP: i64 = -3;
pub const EARLIEST_LOCAL_TIMESTAMP: i64 = -4;
pub const LATEST_TIERED_TIMESTAMP: i64 = -5;

/// `(error, offset, timestamp)` per item: -2 earliest, -1 latest, the special values above,
/// else the first record at or after the timestamp (offset -1 when none is).
pub async fn list_offsets_local(
    shard: &Shard,
    items: Vec<(PartitionKey, i64)>,
) -> Vec<(ResponseError, i64, i64)> {
    let mut out = Vec::with_capacity(items.len());
    for (k, ts) in items {
        let Some(p) = shard.partitions.get(&k) else {
            out.push((ResponseError::NotLeaderOrFollower, -1, -1));
            continue;
        };
        out.push(match ts {
            -2 | EARLIEST_LOCAL_TIMESTAMP => (ResponseError::Unknown(0), p.log_start_offset(), -1),
            -1 => (ResponseError::Unknown(0), p.high_watermark(), -1),
            LATEST_TIERED_TIMESTAMP => (ResponseError::Unknown(0), -1, -1),
            MAX_TIMESTAMP => match p.max_timestamp_offset().await {
                Ok(Some((offset, t))) => (ResponseError::Unknown(0), offset, t),
                Ok(None) => (ResponseError::Unknown(0), -1, -1),
                Err(e) => {
                    warn!(topic = %p.topic, partition = k.1, error = %e, "max timestamp lookup");
                    (ResponseError::KafkaStorageError, -1, -1)
                }
            },
            ts if ts < 0 => (ResponseError::InvalidRequest, -1, -1),
            ts => match p.offset_for_timestamp(ts).await {
                Ok(Some((offset, t))) => (ResponseError::Unknown(0), offset, t),
                Ok(None) => (ResponseError::Unknown(0), -1, -1),
                Err((code, e)) => {
                    warn!(topic = %p.topic, partition = k.1, error = %e, "offset lookup by time");
                    (code, -1, -1)
                }
            },
        });
    }
    out
}

/// OffsetForLeaderEpoch on the owning shard: `(error, epoch, end offset)` per
/// `(partition, current leader epoch, requested epoch)`, from the partition's leader epoch
/// cache (see `Partition::epoch_end`).
pub fn epoch_ends_local(
    shard: &Shard,
    items: Vec<(PartitionKey, i32, i32)>,
) -> Vec<(ResponseError, i32, i64)> {
    items
        .into_iter()
        .map(|(k, current, requested)| {
            let Some(p) = shard.partitions.get(&k) else {
                return (ResponseError::NotLeaderOrFollower, -1, -1);
            };
            let Some(ours) = p.leader_epoch() else {
                return (ResponseError::NotLeaderOrFollower, -1, -1);
            };
            if let Some(e) = crate::consensus::epoch_check(current, Some(ours)) {
                return (e, -1, -1);
            }
            let (epoch, end) = p.epoch_end(requested);
            (ResponseError::Unknown(0), epoch, end)
        })
        .collect()
}

/// Where partition `index` of `topic` lives: its key and owning shard (`None` for an
/// unknown topic or partition).
pub fn locate(
    shard: &Shard,
    topic: Option<&crate::metadata::TopicMeta>,
    index: i32,
) -> Option<(PartitionKey, usize)> {
    let t = topic?;
    let owner = *t.partition_shards.get(usize::try_from(index).ok()?)?;
    Some(((t.id, index), owner as usize % shard.mesh.nr_shards()))
}

/// Sends per-partition items to their owning shards — `(owner, slot, item)`, one request per
/// shard built by `request` — and hands each answer to `set(slot, answer)`. `unpack` takes the
/// answers out of a shard's response; a shard that did not answer gives `failed` for its items.
pub async fn per_owner<S, T, R: Clone>(
    shard: &Rc<Shard>,
    items: Vec<(usize, S, T)>,
    request: impl Fn(Vec<T>) -> ShardRequest,
    unpack: impl Fn(ShardResponse) -> Option<Vec<R>>,
    failed: R,
    mut set: impl FnMut(S, R),
) {
    let mut by_owner: BTreeMap<usize, (Vec<S>, Vec<T>)> = BTreeMap::new();
    for (owner, slot, item) in items {
        let e = by_owner.entry(owner).or_default();
        e.0.push(slot);
        e.1.push(item);
    }
    let mut slots = Vec::with_capacity(by_owner.len());
    let mut requests = Vec::with_capacity(by_owner.len());
    for (to, (s, items)) in by_owner {
        slots.push(s);
        requests.push((to, request(items)));
    }
    for (slots, answer) in slots.into_iter().zip(fan_out(shard, requests).await) {
        let got = answer.ok().and_then(&unpack);
        let n = slots.len();
        let got = got
            .filter(|g| g.len() == n)
            .unwrap_or_else(|| vec![failed.clone(); n]);
        for (slot, r) in slots.into_iter().zip(got) {
            set(slot, r);
        }
    }
}

/// Groups `(slot, item)` pairs by owning shard.
pub fn by_shard<T>(items: Vec<(usize, usize, T)>) -> BTreeMap<usize, Vec<(usize, T)>> {
    let mut m: BTreeMap<usize, Vec<(usize, T)>> = BTreeMap::new();
    for (shard, slot, item) in items {
        m.entry(shard).or_default().push((slot, item));
    }
    m
}

/// Sends one request per destination shard, all at once, and returns the responses in
/// `dests` order.
pub async fn fan_out(
    shard: &Rc<Shard>,
    requests: Vec<(usize, ShardRequest)>,
) -> Vec<Result<ShardResponse, crate::metadata::controller::KError>> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(to, req)| {
            let shard = shard.clone();
            glommio::spawn_local(async move { shard.call(to, req).await })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

/// Waits until any listed partition (on any shard) passes its high watermark, or until
/// `deadline`.
pub async fn wait_any(
    shard: &Rc<Shard>,
    by_owner: BTreeMap<usize, Vec<(PartitionKey, i64)>>,
    deadline: Instant,
) {
    let now = Instant::now();
    if deadline <= now || by_owner.is_empty() {
        return;
    }
    let max_wait = deadline - now;
    let (tx, rx) = glommio::channels::local_channel::new_bounded::<()>(1);
    let tx = Rc::new(tx);
    let mut tasks = Vec::new();
    for (to, items) in by_owner {
        let shard = shard.clone();
        let tx = tx.clone();
        tasks.push(glommio::spawn_local(async move {
            let _ = shard
                .call(to, ShardRequest::WaitHighWatermark { items, max_wait })
                .await;
            let _ = tx.try_send(());
        }));
    }
    let _ = glommio::timer::timeout(max_wait, async {
        let _ = rx.recv().await;
        Ok(())
    })
    .await;
    // Remote waits still parked end by their own deadline; their answers are ignored.
    for t in tasks {
        t.detach();
    }
}
