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
//! * `compact,delete`: both — deletion first, then compaction of what is left.
//!
//! Internal topics (`__consumer_offsets`) are compacted by their coordinator instead
//! ([`crate::groups`]).

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use glommio::{Latency, Shares};
use tracing::{info, warn};

use crate::compaction::{CleanerMemo, CompactRules};
use crate::metadata::configs::topic_config;
use crate::shard::Shard;

/// Shares of the retention queue (the default queue has 1000).
const RETENTION_SHARES: usize = 50;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `-1` (or any negative value) means "no limit", as in Kafka.
fn limit(v: Option<i64>) -> Option<u64> {
    v.filter(|v| *v >= 0).map(|v| v as u64)
}

/// Starts the shard's retention loop.
pub fn start(shard: Rc<Shard>) {
    let tq = glommio::executor().create_task_queue(
        Shares::Static(RETENTION_SHARES),
        Latency::NotImportant,
        "retention",
    );
    let every = shard.config.log_retention_check_interval;
    let id = shard.id;
    let spawned = glommio::spawn_local_into(
        async move {
            let mut memo = CleanerMemo::default();
            loop {
                let slept = futures_lite::future::or(
                    async {
                        glommio::timer::sleep(every).await;
                        true
                    },
                    async {
                        shard.shutdown.wait().await;
                        false
                    },
                )
                .await;
                if !slept {
                    break;
                }
                pass(&shard, &mut memo).await;
            }
        },
        tq,
    );
    match spawned {
        Ok(t) => {
            t.detach();
        }
        Err(e) => warn!(shard = id, error = %e, "retention task did not start"),
    }
}

async fn pass(shard: &Shard, memo: &mut CleanerMemo) {
    let now = now_ms();
    let partitions = shard.partitions.all();
    if !memo.is_empty() {
        let live: std::collections::HashSet<_> = partitions.iter().map(|p| p.key).collect();
        memo.retain(|k| live.contains(k));
    }
    for p in partitions {
        if shard.shutdown.is_fired() {
            break;
        }
        let rules = {
            let img = shard.image.borrow();
            img.topics.get(&p.topic).map(|t| {
                let get = |name: &str| {
                    topic_config(name).map(|def| {
                        img.effective_topic_config(def, &t.configs, shard.config.node_id)
                            .0
                    })
                };
                let policy = get("cleanup.policy").unwrap_or_default();
                let delete = policy.contains("delete");
                let compact = policy
                    .contains("compact")
                    .then(|| CompactRules::from_configs(get));
                let num = |name: &str| get(name).and_then(|v| v.parse::<i64>().ok());
                (
                    delete,
                    compact,
                    limit(num("retention.ms")),
                    limit(num("retention.bytes")),
                )
            })
        };
        let Some((delete, compact, retention_ms, retention_bytes)) = rules else {
            continue;
        };
        let (by_time, by_size) = if delete {
            p.apply_retention(now, retention_ms, retention_bytes).await
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
        if let Some(rules) = compact {
            crate::compaction::maybe_compact(shard, &p, &rules, now_ms(), memo).await;
        }
        glommio::yield_if_needed().await;
    }
}
