//! Workload files: OMB-style YAML (the field names of OpenMessaging Benchmark's workloads where
//! they exist, camelCase), plus what a two-core side-by-side run needs: durations in seconds,
//! `--quick` overrides, rates derived from another workload's measured maximum, and client
//! properties passed straight to librdkafka.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// How records get keys (and partitions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyDistributor {
    /// No key: librdkafka's sticky partitioner spreads batches over the partitions.
    #[default]
    NoKey,
    /// Keys `k0..k{keyCount-1}` in turn, partitioned by the client's partitioner.
    KeyRoundRobin,
    /// A uniformly random key of `keyCount`, partitioned by the client's partitioner.
    Random,
    /// No key; record i of a producer goes to partition i mod partitions (every partition
    /// gets the same share: W6's "1 msg/s per partition").
    PartitionRoundRobin,
}

/// A rate taken from another workload's measured maximum (W2: 50% of Kafka's W1 max).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateOf {
    /// `name` of the workload whose throughput is the base.
    pub workload: String,
    /// Whose result of that workload: `spate`, `kafka-fsync` or `kafka-default`.
    #[serde(default = "default_rate_broker")]
    pub broker: String,
    /// Fractions of the base to offer, one run per fraction (a latency-vs-rate sweep).
    pub fractions: Vec<f64>,
    /// Base in MiB/s when the referenced workload was not run (e.g. `--workload` alone).
    pub fallback_mib_per_sec: f64,
}

fn default_rate_broker() -> String {
    "kafka-fsync".into()
}

/// Fields `--quick` replaces.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QuickOverrides {
    pub warmup_seconds: Option<f64>,
    pub duration_seconds: Option<f64>,
    pub consumer_backlog_size_mib: Option<u64>,
    pub partitions_per_topic: Option<u32>,
    pub fractions: Option<Vec<f64>>,
    pub rounds: Option<u32>,
    /// Leave this workload out of `--quick` runs.
    pub skip: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    /// Short id, also the topic prefix and the key in results (e.g. `w1-max-throughput`).
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub topics: u32,
    pub partitions_per_topic: u32,
    /// Bytes per record value (at least 16: an 8-byte send timestamp and an 8-byte sequence).
    pub message_size: usize,
    /// Fraction of each value that is random bytes (the rest is zeros).
    #[serde(default = "default_random_ratio")]
    pub random_bytes_ratio: f64,
    #[serde(default)]
    pub key_distributor: KeyDistributor,
    /// Distinct keys for the keyed distributors.
    #[serde(default = "default_key_count")]
    pub key_count: u64,
    pub producers_per_topic: u32,
    /// 0 or 1: consumers never join a group (partitions are assigned directly), so a
    /// "subscription" is just one set of consumers covering every partition.
    #[serde(default)]
    pub subscriptions_per_topic: u32,
    #[serde(default)]
    pub consumer_per_subscription: u32,
    /// Records per second over all producers; 0 = as fast as they go.
    #[serde(default)]
    pub producer_rate: f64,
    /// Instead of `producerRate`: fractions of another workload's measured throughput.
    #[serde(default)]
    pub producer_rate_of: Option<RateOf>,
    /// Non-zero: write this many MiB with no consumer first, then measure consumers reading
    /// it from the start (a catch-up read). Producers stop before the read.
    #[serde(default)]
    pub consumer_backlog_size_mib: u64,
    /// Before the catch-up read, `sync` and drop the page cache (root only; skipped otherwise),
    /// so the read comes from the disk for both brokers.
    #[serde(default)]
    pub drop_page_cache: bool,
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
    /// Alternating rounds per broker (results are medians over rounds).
    #[serde(default = "one")]
    pub rounds: u32,
    #[serde(default)]
    pub quick: QuickOverrides,
    /// librdkafka producer properties (after the runner's defaults).
    #[serde(default)]
    pub producer_config: BTreeMap<String, String>,
    /// librdkafka consumer properties (after the runner's defaults).
    #[serde(default)]
    pub consumer_config: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}
fn default_random_ratio() -> f64 {
    0.5
}
fn default_key_count() -> u64 {
    10_000
}

/// Header of every record value: send timestamp (CLOCK_MONOTONIC ns) and sequence number.
pub const HEADER_BYTES: usize = 16;

impl Workload {
    pub fn parse(text: &str) -> Result<Workload> {
        let w: Workload = serde_yaml::from_str(text)?;
        w.validate()?;
        Ok(w)
    }

    pub fn load(path: &Path) -> Result<Workload> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Workload::parse(&text).with_context(|| format!("workload {}", path.display()))
    }

    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "name {:?} must be non-empty [A-Za-z0-9_-] (it becomes a topic name)",
                self.name
            );
        }
        if self.topics == 0 || self.partitions_per_topic == 0 {
            bail!("topics and partitionsPerTopic must be at least 1");
        }
        if self.message_size < HEADER_BYTES {
            bail!(
                "messageSize {} is below the {HEADER_BYTES}-byte timestamp+sequence header",
                self.message_size
            );
        }
        if !(0.0..=1.0).contains(&self.random_bytes_ratio) {
            bail!("randomBytesRatio must be within 0..=1");
        }
        if self.key_count == 0 {
            bail!("keyCount must be at least 1");
        }
        if self.producers_per_topic == 0 {
            bail!("producersPerTopic must be at least 1");
        }
        if self.subscriptions_per_topic > 1 {
            bail!("subscriptionsPerTopic > 1 needs consumer groups, which the runner does not use");
        }
        if self.subscriptions_per_topic == 1 && self.consumer_per_subscription == 0 {
            bail!("subscriptionsPerTopic 1 needs consumerPerSubscription >= 1");
        }
        if !(self.producer_rate >= 0.0 && self.producer_rate.is_finite()) {
            bail!("producerRate must be >= 0 (0 = max)");
        }
        if let Some(r) = &self.producer_rate_of {
            if self.producer_rate != 0.0 {
                bail!("give producerRate or producerRateOf, not both");
            }
            let fr = self.quick.fractions.iter().flatten().chain(&r.fractions);
            if r.fractions.is_empty() || fr.clone().any(|f| !(*f > 0.0 && f.is_finite())) {
                bail!("producerRateOf.fractions must be non-empty and > 0");
            }
            if r.fallback_mib_per_sec <= 0.0 {
                bail!("producerRateOf.fallbackMibPerSec must be > 0");
            }
        }
        if self.consumer_backlog_size_mib > 0 && self.consumers() == 0 {
            bail!("consumerBacklogSizeMib needs consumers");
        }
        let w = self.quick.warmup_seconds.unwrap_or(self.warmup_seconds);
        let d = self.quick.duration_seconds.unwrap_or(self.duration_seconds);
        for v in [self.warmup_seconds, w] {
            if !(v >= 0.0 && v.is_finite()) {
                bail!("warmupSeconds must be >= 0");
            }
        }
        for v in [self.duration_seconds, d] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("durationSeconds must be > 0");
            }
        }
        if self.rounds == 0 || self.quick.rounds == Some(0) {
            bail!("rounds must be at least 1");
        }
        Ok(())
    }

    /// This workload as `--quick` runs it.
    pub fn for_mode(&self, quick: bool) -> Workload {
        let mut w = self.clone();
        if !quick {
            return w;
        }
        let q = &self.quick;
        w.warmup_seconds = q.warmup_seconds.unwrap_or(w.warmup_seconds);
        w.duration_seconds = q.duration_seconds.unwrap_or(w.duration_seconds);
        w.consumer_backlog_size_mib = q
            .consumer_backlog_size_mib
            .unwrap_or(w.consumer_backlog_size_mib);
        w.partitions_per_topic = q.partitions_per_topic.unwrap_or(w.partitions_per_topic);
        w.rounds = q.rounds.unwrap_or(w.rounds);
        if let (Some(r), Some(f)) = (w.producer_rate_of.as_mut(), &q.fractions) {
            r.fractions = f.clone();
        }
        w
    }

    pub fn skip_in_quick(&self) -> bool {
        self.quick.skip.unwrap_or(false)
    }

    pub fn producers(&self) -> u32 {
        self.topics * self.producers_per_topic
    }

    pub fn consumers(&self) -> u32 {
        self.topics * self.subscriptions_per_topic * self.consumer_per_subscription
    }

    pub fn total_partitions(&self) -> u64 {
        u64::from(self.topics) * u64::from(self.partitions_per_topic)
    }

    /// Topic i of this workload; the process id keeps reruns against one broker apart.
    pub fn topic_name(&self, i: u32) -> String {
        format!("perf-{}-{}-{i}", self.name, std::process::id())
    }

    /// Records/s to offer for a throughput base in MiB/s and a fraction of it.
    pub fn rate_for(&self, base_mib_s: f64, fraction: f64) -> f64 {
        base_mib_s * fraction * (1u64 << 20) as f64 / self.message_size as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W2: &str = r#"
name: w2-fixed-rate
topics: 1
partitionsPerTopic: 16
messageSize: 1024
randomBytesRatio: 0.25
keyDistributor: NO_KEY
producersPerTopic: 1
subscriptionsPerTopic: 1
consumerPerSubscription: 1
producerRateOf: { workload: w1-max-throughput, fractions: [0.25, 0.5], fallbackMibPerSec: 40 }
warmupSeconds: 10
durationSeconds: 60
quick: { warmupSeconds: 2, durationSeconds: 8, fractions: [0.5] }
producerConfig: { acks: all, linger.ms: "5" }
"#;

    #[test]
    fn parses_an_omb_style_workload_and_its_quick_form() {
        let w = Workload::parse(W2).unwrap();
        assert_eq!(w.name, "w2-fixed-rate");
        assert_eq!(w.partitions_per_topic, 16);
        assert_eq!(w.key_distributor, KeyDistributor::NoKey);
        assert_eq!(w.producer_rate, 0.0);
        let r = w.producer_rate_of.as_ref().unwrap();
        assert_eq!(r.broker, "kafka-fsync");
        assert_eq!(r.fractions, vec![0.25, 0.5]);
        assert_eq!(w.producer_config["linger.ms"], "5");
        assert_eq!(w.consumers(), 1);
        assert_eq!(w.rounds, 1);
        let q = w.for_mode(true);
        assert_eq!((q.warmup_seconds, q.duration_seconds), (2.0, 8.0));
        assert_eq!(q.producer_rate_of.unwrap().fractions, vec![0.5]);
        assert_eq!(w.for_mode(false), w);
    }

    #[test]
    fn every_shipped_workload_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                names.push(Workload::load(&p).unwrap().name);
            }
        }
        names.sort();
        assert!(names.len() >= 6, "{names:?}");
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(dedup, names, "workload names must be unique");
    }

    #[test]
    fn rejects_bad_workloads() {
        for (patch, why) in [
            ("messageSize: 8", "header"),
            ("subscriptionsPerTopic: 2", "groups"),
            ("randomBytesRatio: 1.5", "randomBytesRatio"),
            ("name: \"a b\"", "name"),
            ("producerRate: 100", "not both"),
            ("bogusField: 1", "unknown field"),
        ] {
            let key = patch.split(':').next().unwrap();
            let text: String = W2
                .lines()
                .filter(|l| !l.starts_with(&format!("{key}:")))
                .chain(std::iter::once(patch))
                .collect::<Vec<_>>()
                .join("\n");
            let err = format!("{:#}", Workload::parse(&text).unwrap_err());
            assert!(err.contains(why), "{patch}: {err}");
        }
    }

    #[test]
    fn rate_for_converts_mib_per_sec_to_records() {
        let w = Workload::parse(W2).unwrap();
        // 40 MiB/s × 0.5 of 1 KiB records = 20 480 records/s.
        assert_eq!(w.rate_for(40.0, 0.5), 20_480.0);
    }
}
