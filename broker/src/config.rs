//! Node configuration: defaults < TOML file < `SPATE_*` environment < command-line flags.
//!
//! Every key is documented in `deploy/spated.toml`; unknown keys in the file are rejected so a
//! typo never silently falls back to a default.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;

use crate::limits;

const AFTER_HELP: &str = "\
Precedence: command-line flags > SPATE_* environment variables > the --config file > defaults.
Every key of the config file is documented in deploy/spated.toml.

Examples:
  spated                                   # ./data, Kafka on 127.0.0.1:9092, all cores
  spated --data-dir /var/lib/spate --smp 4 --kafka-addr 0.0.0.0:9092 \\
         --advertised-kafka-addr broker1.example:9092
  SPATE_SMP=2 spated --config /etc/spate/spated.toml";

/// spated — Spate's broker: a Kafka-compatible, thread-per-core streaming broker.
#[derive(Debug, Parser, Default)]
#[command(name = "spated", version, after_help = AFTER_HELP)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "SPATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory for all data (default ./data).
    #[arg(long, env = "SPATE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the Kafka listener binds (default 127.0.0.1:9092).
    #[arg(long, env = "SPATE_KAFKA_ADDR", value_name = "HOST:PORT")]
    pub kafka_addr: Option<String>,
    /// Address clients are told to connect to (default: the Kafka address).
    #[arg(long, env = "SPATE_ADVERTISED_KAFKA_ADDR", value_name = "HOST:PORT")]
    pub advertised_kafka_addr: Option<String>,
    /// Address of the admin HTTP API (default 127.0.0.1:9644).
    #[arg(long, env = "SPATE_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<String>,
    /// Number of shards, one per core (default: all online cores).
    #[arg(long, env = "SPATE_SMP", value_name = "N")]
    pub smp: Option<usize>,
    /// This node's id (default 0).
    #[arg(long, env = "SPATE_NODE_ID", value_name = "N")]
    pub node_id: Option<i32>,
    /// How long a new group waits for more members before its first rebalance completes
    /// (Kafka's group.initial.rebalance.delay.ms; default 3000).
    #[arg(
        long,
        env = "SPATE_GROUP_INITIAL_REBALANCE_DELAY_MS",
        value_name = "MS"
    )]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// How often retention runs (Kafka's log.retention.check.interval.ms; default 300000).
    #[arg(long, env = "SPATE_LOG_RETENTION_CHECK_INTERVAL_MS", value_name = "MS")]
    pub log_retention_check_interval_ms: Option<u64>,
}

/// The config file. Field names are the TOML keys.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub kafka_addr: Option<String>,
    pub advertised_kafka_addr: Option<String>,
    pub admin_addr: Option<String>,
    pub smp: Option<usize>,
    pub node_id: Option<i32>,
    pub pin_shards: Option<bool>,
    pub log_filter: Option<String>,
    pub request_frame_bytes_max: Option<usize>,
    pub inflight_requests_per_connection_max: Option<usize>,
    pub connections_max_idle_ms: Option<u64>,
    pub io_memory_bytes: Option<usize>,
    pub shutdown_timeout_ms: Option<u64>,
    pub default_partitions: Option<i32>,
    pub default_replication_factor: Option<i16>,
    pub group_initial_rebalance_delay_ms: Option<u64>,
    pub group_min_session_timeout_ms: Option<i32>,
    pub group_max_session_timeout_ms: Option<i32>,
    pub offsets_topic_num_partitions: Option<i32>,
    pub offsets_retention_minutes: Option<u64>,
    pub offset_metadata_max_bytes: Option<usize>,
    pub batch_cache_bytes: Option<u64>,
    pub log_retention_check_interval_ms: Option<u64>,
    pub log_cleaner_io_max_bytes_per_second: Option<u64>,
}

/// The resolved configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub kafka_addr: SocketAddr,
    /// `(host, port)` advertised in Metadata and DescribeCluster.
    pub advertised_kafka_addr: (String, u16),
    pub admin_addr: SocketAddr,
    pub smp: usize,
    pub node_id: i32,
    pub pin_shards: bool,
    pub log_filter: String,
    pub request_frame_bytes_max: usize,
    pub inflight_requests_per_connection_max: usize,
    pub connections_max_idle: Duration,
    /// `None`: sized from RLIMIT_MEMLOCK at start.
    pub io_memory_bytes: Option<usize>,
    pub shutdown_timeout: Duration,
    pub default_partitions: i32,
    pub default_replication_factor: i16,
    pub groups: GroupConfig,
    /// Per-shard batch cache budget (0: no cache).
    pub batch_cache_bytes: u64,
    /// How often a shard applies retention and segment.ms rolls.
    pub log_retention_check_interval: Duration,
    /// Bytes per second one shard's compaction reads at most (both passes; 0: no limit).
    pub log_cleaner_io_max_bytes_per_second: u64,
    /// Cap on one I/O of the segment files: the data dir's device `max_sectors_kb`, read at
    /// start (`spate_storage::dma::device_max_io`); the 128 KiB default until then.
    pub max_io_bytes: usize,
}

/// The group coordinator's settings (Kafka's `group.*` and `offsets.*` broker configs).
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub offsets_topic_partitions: i32,
    pub offsets_retention: Duration,
    pub offset_metadata_max_bytes: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_millis(3_000),
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            offsets_topic_partitions: 16,
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// Compaction's default I/O budget per shard. Kafka's `log.cleaner.io.max.bytes.per.second`
/// is unlimited by default; unthrottled, a compaction reading at disk speed moved the acks=all
/// produce p99 from 0.4 to 2.2 ms on the dev VM, at 32 MiB/s to 0.85 ms, at 16 MiB/s to
/// 0.47 ms (perf/scripts/compaction_latency.py; perf/README.md), so Spate caps it by default.
pub const DEFAULT_CLEANER_IO_BYTES_PER_SECOND: u64 = 16 << 20;

fn range_check<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T> {
    if value < min || value > max {
        bail!("{key} = {value} is out of range: allowed {min}..={max}");
    }
    Ok(value)
}

fn resolve_addr(key: &str, s: &str) -> Result<SocketAddr> {
    s.to_socket_addrs()
        .with_context(|| format!("{key} = {s:?} is not a HOST:PORT address"))?
        .next()
        .with_context(|| format!("{key} = {s:?} resolves to no address"))
}

fn split_host_port(key: &str, s: &str) -> Result<(String, u16)> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("{key} = {s:?} is not a HOST:PORT address"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{key} = {s:?}: port must be 1..=65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        bail!("{key} = {s:?}: needs a host and a port in 1..=65535");
    }
    Ok((host.to_string(), port))
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Config {
    /// Resolves flags (already merged with the environment by clap) over the file and defaults.
    pub fn resolve(args: Args) -> Result<Config> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let cpus = online_cpus();
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let kafka_addr_s = args
            .kafka_addr
            .or(file.kafka_addr)
            .unwrap_or_else(|| "127.0.0.1:9092".into());
        let kafka_addr = resolve_addr("kafka_addr", &kafka_addr_s)?;
        let advertised_s = args
            .advertised_kafka_addr
            .or(file.advertised_kafka_addr)
            .filter(|s| !s.is_empty());
        let advertised_kafka_addr = match advertised_s {
            Some(s) => split_host_port("advertised_kafka_addr", &s)?,
            None => {
                if kafka_addr.ip().is_unspecified() {
                    bail!(
                        "kafka_addr = {kafka_addr} binds every interface: set \
                         advertised_kafka_addr to the address clients should use"
                    );
                }
                (kafka_addr.ip().to_string(), kafka_addr.port())
            }
        };
        let admin_addr_s = args
            .admin_addr
            .or(file.admin_addr)
            .unwrap_or_else(|| "127.0.0.1:9644".into());
        let admin_addr = resolve_addr("admin_addr", &admin_addr_s)?;
        let smp = args.smp.or(file.smp).unwrap_or(0);
        let smp = if smp == 0 { cpus } else { smp };
        let smp = range_check("smp", smp, 1, limits::SHARDS_MAX)?;
        let node_id = args.node_id.or(file.node_id).unwrap_or(0);
        let node_id = range_check("node_id", node_id, 0, i32::MAX)?;
        let request_frame_bytes_max = range_check(
            "request_frame_bytes_max",
            file.request_frame_bytes_max
                .unwrap_or(limits::REQUEST_FRAME_BYTES_DEFAULT),
            1024,
            limits::REQUEST_FRAME_BYTES_MAX,
        )?;
        let inflight = range_check(
            "inflight_requests_per_connection_max",
            file.inflight_requests_per_connection_max
                .unwrap_or(limits::INFLIGHT_REQUESTS_PER_CONNECTION_DEFAULT),
            1,
            limits::INFLIGHT_REQUESTS_PER_CONNECTION_MAX,
        )?;
        let idle_ms = range_check(
            "connections_max_idle_ms",
            file.connections_max_idle_ms.unwrap_or(600_000),
            1_000,
            7 * 24 * 3_600_000,
        )?;
        let io_memory_bytes = match file.io_memory_bytes {
            None | Some(0) => None,
            Some(n) => Some(range_check("io_memory_bytes", n, 64 << 10, 1 << 30)?),
        };
        let shutdown_ms = range_check(
            "shutdown_timeout_ms",
            file.shutdown_timeout_ms.unwrap_or(5_000),
            100,
            600_000,
        )?;
        let default_partitions = range_check(
            "default_partitions",
            file.default_partitions.unwrap_or(1),
            1,
            limits::PARTITIONS_PER_TOPIC_MAX,
        )?;
        let default_replication_factor = range_check(
            "default_replication_factor",
            file.default_replication_factor.unwrap_or(1),
            1,
            limits::REPLICATION_FACTOR_MAX,
        )?;
        let d = GroupConfig::default();
        let groups = GroupConfig {
            initial_rebalance_delay: Duration::from_millis(range_check(
                "group_initial_rebalance_delay_ms",
                args.group_initial_rebalance_delay_ms
                    .or(file.group_initial_rebalance_delay_ms)
                    .unwrap_or(3_000),
                0,
                300_000,
            )?),
            min_session_timeout_ms: range_check(
                "group_min_session_timeout_ms",
                file.group_min_session_timeout_ms
                    .unwrap_or(d.min_session_timeout_ms),
                1,
                i32::MAX,
            )?,
            max_session_timeout_ms: range_check(
                "group_max_session_timeout_ms",
                file.group_max_session_timeout_ms
                    .unwrap_or(d.max_session_timeout_ms),
                1,
                i32::MAX,
            )?,
            offsets_topic_partitions: range_check(
                "offsets_topic_num_partitions",
                file.offsets_topic_num_partitions
                    .unwrap_or(d.offsets_topic_partitions),
                1,
                1000,
            )?,
            offsets_retention: Duration::from_secs(
                60 * range_check(
                    "offsets_retention_minutes",
                    file.offsets_retention_minutes.unwrap_or(7 * 24 * 60),
                    1,
                    1 << 30,
                )?,
            ),
            offset_metadata_max_bytes: range_check(
                "offset_metadata_max_bytes",
                file.offset_metadata_max_bytes
                    .unwrap_or(d.offset_metadata_max_bytes),
                0,
                1 << 20,
            )?,
        };
        if groups.min_session_timeout_ms > groups.max_session_timeout_ms {
            bail!(
                "group_min_session_timeout_ms = {} is above group_max_session_timeout_ms = {}",
                groups.min_session_timeout_ms,
                groups.max_session_timeout_ms
            );
        }
        let batch_cache_bytes = range_check(
            "batch_cache_bytes",
            file.batch_cache_bytes.unwrap_or(64 << 20),
            0,
            64 << 30,
        )?;
        let retention_check_ms = range_check(
            "log_retention_check_interval_ms",
            args.log_retention_check_interval_ms
                .or(file.log_retention_check_interval_ms)
                .unwrap_or(300_000),
            100,
            24 * 3_600_000,
        )?;
        let log_cleaner_io_max_bytes_per_second = range_check(
            "log_cleaner_io_max_bytes_per_second",
            file.log_cleaner_io_max_bytes_per_second
                .unwrap_or(DEFAULT_CLEANER_IO_BYTES_PER_SECOND),
            0,
            1 << 40,
        )?;
        Ok(Config {
            groups,
            batch_cache_bytes,
            log_cleaner_io_max_bytes_per_second,
            log_retention_check_interval: Duration::from_millis(retention_check_ms),
            data_dir,
            kafka_addr,
            advertised_kafka_addr,
            admin_addr,
            smp,
            node_id,
            pin_shards: file.pin_shards.unwrap_or(false),
            log_filter: file.log_filter.unwrap_or_else(|| "info".into()),
            request_frame_bytes_max,
            inflight_requests_per_connection_max: inflight,
            connections_max_idle: Duration::from_millis(idle_ms),
            io_memory_bytes,
            shutdown_timeout: Duration::from_millis(shutdown_ms),
            default_partitions,
            default_replication_factor,
            max_io_bytes: spate_storage::log::file::MAX_IO_BYTES,
        })
    }
}

/// Reads and parses a config file; errors name the file and the offending key.
pub fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        let mut v = vec!["spated"];
        v.extend_from_slice(list);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::resolve(Args::default()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.kafka_addr.to_string(), "127.0.0.1:9092");
        assert_eq!(c.advertised_kafka_addr, ("127.0.0.1".to_string(), 9092));
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:9644");
        assert_eq!(c.smp, online_cpus());
        assert_eq!(c.node_id, 0);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "smp = 1\nnode_id = 4\nkafka_addr = \"127.0.0.1:1234\"\n",
        )
        .unwrap();
        let c = Config::resolve(args(&[
            "--config",
            path.to_str().unwrap(),
            "--node-id",
            "7",
        ]))
        .unwrap();
        assert_eq!(c.node_id, 7, "flag wins over file");
        assert_eq!(c.smp, 1, "file wins over default");
        assert_eq!(c.kafka_addr.port(), 1234);
        assert_eq!(c.advertised_kafka_addr.1, 1234);
    }

    #[test]
    fn out_of_range_values_name_the_allowed_range() {
        let err = Config::resolve(args(&["--smp", "100000"])).unwrap_err();
        assert!(err
            .to_string()
            .contains("smp = 100000 is out of range: allowed 1..="));
        let err = Config::resolve(args(&["--node-id=-1"])).unwrap_err();
        assert!(err.to_string().contains("node_id"), "{err}");
        let err = Config::resolve(args(&["--kafka-addr", "nonsense"])).unwrap_err();
        assert!(err.to_string().contains("kafka_addr"), "{err}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "smpp = 1\n").unwrap();
        let err = Config::resolve(args(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("smpp"), "{err:#}");
    }

    #[test]
    fn the_sample_config_only_has_known_keys_and_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/spated.toml");
        let file = load_file(&path).unwrap();
        assert!(file.data_dir.is_some());
        Config::resolve(args(&["--config", path.to_str().unwrap()])).unwrap();
    }
}
