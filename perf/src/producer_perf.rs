//! Second opinion: Apache Kafka's own `kafka-producer-perf-test`
//! (org.apache.kafka.tools.ProducerPerformance from the jars) against each broker.

use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::broker::Env;

/// Its final summary line. MB/s is MiB/s (ProducerPerformance divides by 1024 × 1024).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerfSummary {
    pub records: u64,
    pub records_s: f64,
    pub mib_s: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// Parse "N records sent, R records/sec (M MB/sec), A ms avg latency, X ms max latency,
/// P ms 50th, P ms 95th, P ms 99th, P ms 99.9th." — the last such line of the output.
pub fn parse_summary(stdout: &str) -> Option<PerfSummary> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("records sent,") && l.contains("99.9th"))?;
    let nums: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|s| !s.is_empty() && *s != ".")
        .filter_map(|s| s.trim_end_matches('.').parse().ok())
        .collect();
    // records, rec/s, MB/s, avg, max, 50, p50, 95, p95, 99, p99, 99.9, p99.9
    if nums.len() < 13 {
        return None;
    }
    Some(PerfSummary {
        records: nums[0] as u64,
        records_s: nums[1],
        mib_s: nums[2],
        avg_ms: nums[3],
        max_ms: nums[4],
        p50_ms: nums[5],
        p95_ms: nums[7],
        p99_ms: nums[9],
        p999_ms: nums[11],
    })
}

/// Run ProducerPerformance pinned to the client cores: `records` × `record_size` bytes at full
/// speed, acks=all, 5 ms linger, 128 KiB batches, no compression (the stopgap script's flags).
pub fn run(
    env: &Env,
    bootstrap: &str,
    topic: &str,
    records: u64,
    record_size: usize,
) -> Result<(PerfSummary, String)> {
    let out = env
        .java(
            &env.client_cpus,
            "1g",
            false,
            "org.apache.kafka.tools.ProducerPerformance",
        )
        .args(["--topic", topic, "--num-records", &records.to_string()])
        .args([
            "--record-size",
            &record_size.to_string(),
            "--throughput",
            "-1",
        ])
        .args([
            "--producer-props",
            &format!("bootstrap.servers={bootstrap}"),
        ])
        .args([
            "acks=all",
            "linger.ms=5",
            "batch.size=131072",
            "compression.type=none",
        ])
        .stdin(Stdio::null())
        .output()
        .context("running ProducerPerformance")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let log = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    match parse_summary(&stdout) {
        Some(s) if out.status.success() => Ok((s, log)),
        _ => bail!("ProducerPerformance failed ({}):\n{}", out.status, log),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_summary_line() {
        let out = "1000 records sent, 200.0 records/sec (0.20 MB/sec), 3.1 ms avg latency, 9.0 ms max latency.\n\
            200000 records sent, 111234.5 records/sec (108.63 MB/sec), 40.12 ms avg latency, \
            812.00 ms max latency, 35 ms 50th, 80 ms 95th, 796 ms 99th, 870 ms 99.9th.\n";
        let s = parse_summary(out).unwrap();
        assert_eq!(
            s,
            PerfSummary {
                records: 200_000,
                records_s: 111_234.5,
                mib_s: 108.63,
                avg_ms: 40.12,
                max_ms: 812.0,
                p50_ms: 35.0,
                p95_ms: 80.0,
                p99_ms: 796.0,
                p999_ms: 870.0,
            }
        );
        assert!(parse_summary("nothing here").is_none());
    }
}
