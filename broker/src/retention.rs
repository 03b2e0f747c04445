//! Retention: every `log_retention_check_interval_ms`, each shard walks its partitions on a
//! low-share task queue (so produce and fetch latency do not move), rolls active segments
//! older than `segment.ms`, and applies the topic's cleanup policy:
//!
//! * `delete`: whole closed segments past `retention.ms` (by the segment's largest
//!   timestamp) or beyond `retention.bytes` go, oldest first, and the log start moves past
//!   them;
//! * `compact`: log compaction ([`crate::compaction`]) keeps the latest record per key in the
//!   closed segments, when `min.cleanable.dirty.ratio`, `max.compaction.lag.ms` (or a
//!   tombstone past `delete.retention.ms`) call for it;
//! * `compact,delete`: both (deletion and compaction run in separate loops, on separate
//!   low-share queues, so a long compaction does not hold up deletion).
//!
//! Internal topics (`__consumer_offsets`) are compacted by their coordinator instead
//! ([`crate::groups`]).

use std::rc::Rc;

use glommio::{Latency, Shares};
use tracing::{info, warn};

use crate::compaction::{CleanerMemo, CompactRules};
use crate::metadata::configs::topic_config;
use crate::shard::Shard;

/// Shares of the retention queue (the default queue has 1000).
const RETENTION_SHARES: usize = 50;

/// `-1` (or any negative value) means "no limit", as in Kafka.
fn limit(v: Option<i64>) -> Option<u64> {
    v.filter(|v| *v >= 0).map(|v| v as u64)
}

/// Waits one interval; `false` once the shard shuts down.
async fn wait(shard: &Shard, every: std::time::Duration) -> bool {
    futures_lite::future::or(
        async {
            glommio::timer::sleep(every).await;
            true
        },
        async {
            shard.shutdown.wait().await;
            false
        },
    )
    .await
}

/// Starts the shard's retention loop and its compaction loop, each on its own low-share task
/// queue: a long compaction (a big log at the cleaner's I/O budget) does not hold up
/// deletion by `retention.ms`/`retention.bytes` or `segment.ms` rolls of other partitions.
pub fn start(shard: Rc<Shard>) {
    let every = shard.config.log_retention_check_interval;
    let id = shard.id;
    let queue = |name: &str| {
        glommio::executor().create_task_queue(
            Shares::Static(RETENTION_SHARES),
            Latency::NotImportant,
            name,
        )
    };
    let s = shard.clone();
    let retention = glommio::spawn_local_into(
        async move {
            while wait(&s, every).await {
                pass(&s).await;
            }
        },
        queue("retention"),
    );
    let compaction = glommio::spawn_local_into(
        async move {
            let mut memo = CleanerMemo::default();
            while wait(&shard, every).await {
                compaction_pass(&shard, &mut memo).await;
            }
        },
        queue("compaction"),
    );
    for (what, spawned) in [("retention", retention), ("compaction", compaction)] {
        match spawned {
            Ok(t) => {
                t.detach();
            }
            Err(e) => warn!(shard = id, error = %e, "{what} task did not start"),
        }
    }
}

/// A topic's cleanup rules as of now.
struct Rules {
    delete: bool,
    compact: Option<CompactRules>,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
}

fn rules(shard: &Shard, topic: &str) -> Option<Rules> {
    let img = shard.image.borrow();
    let t = img.topics.get(topic)?;
    let get = |name: &str| {
        topic_config(name).map(|def| {
            img.effective_topic_config(def, &t.configs, shard.config.node_id)
                .0
        })
    };
    let policy = get("cleanup.policy").unwrap_or_default();
    let num = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
    Some(Rules {
        delete: policy.contains("delete"),
        compact: policy
            .contains("compact")
            .then(|| CompactRules::from_configs(get)),
        retention_ms: limit(num("retention.ms")),
        retention_bytes: limit(num("retention.bytes")),
    })
}

async fn pass(shard: &Shard) {
    let now = crate::wall_ms();
    for p in shard.partitions.all() {
        if shard.shutdown.is_fired() {
            break;
        }
        let Some(r) = rules(shard, &p.topic) else {
            continue;
        };
        let (by_time, by_size) = if r.delete {
            p.apply_retention(now, r.retention_ms, r.retention_bytes)
                .await
        } else {
            // Still roll by segment.ms.
            p.apply_retention(now, None, None).await
        };
        if by_time + by_size > 0 {
            info!(topic = %p.topic, partition = p.key.1, by_time, by_size,
                log_start = p.log_start_offset(), "retention deleted segments");
            shard
                .metrics
                .retention_segments
                .inc_by((by_time + by_size) as u64);
        }
        glommio::yield_if_needed().await;
    }
}

async fn compaction_pass(shard: &Shard, memo: &mut CleanerMemo) {
    let partitions = shard.partitions.all();
    if !memo.is_empty() {
        let live: std::collections::HashSet<_> = partitions.iter().map(|p| p.key).collect();
        memo.retain(|k| live.contains(k));
    }
    for p in partitions {
        if shard.shutdown.is_fired() {
            break;
        }
        if let Some(compact) = rules(shard, &p.topic).and_then(|r| r.compact) {
            crate::compaction::maybe_compact(shard, &p, &compact, crate::wall_ms(), memo).await;
        }
        glommio::yield_if_needed().await;
    }
}
