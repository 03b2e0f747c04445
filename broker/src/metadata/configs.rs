//! Kafka's topic configs: names, types, defaults, validation, and their broker-level synonyms.
//!
//! A topic's effective value is its own override, else the cluster-wide dynamic override of
//! the broker synonym (set through IncrementalAlterConfigs on the broker resource), else the
//! default below — Kafka's order (DYNAMIC_TOPIC_CONFIG > DYNAMIC_DEFAULT_BROKER_CONFIG >
//! DEFAULT_CONFIG).

use std::collections::BTreeMap;

/// Kafka's `ConfigType` values as sent in DescribeConfigs v3+.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ConfigType {
    Boolean = 1,
    String = 2,
    Int = 3,
    Long = 5,
    Double = 6,
    List = 7,
}

/// Kafka's `ConfigSource` values.
pub mod source {
    pub const DYNAMIC_TOPIC_CONFIG: i8 = 1;
    pub const DYNAMIC_BROKER_CONFIG: i8 = 2;
    pub const DYNAMIC_DEFAULT_BROKER_CONFIG: i8 = 3;
    pub const STATIC_BROKER_CONFIG: i8 = 4;
    pub const DEFAULT_CONFIG: i8 = 5;
}

#[derive(Debug, Clone, Copy)]
enum Check {
    /// Integer within an inclusive range.
    Range(i64, i64),
    /// Double within an inclusive range.
    DoubleRange(f64, f64),
    /// One of these words (case-insensitive, as Kafka's `ValidString`/`CaseInsensitiveValidString`).
    OneOf(&'static [&'static str]),
    /// A comma-separated, non-empty list of these words.
    ListOf(&'static [&'static str]),
    Bool,
}

/// One topic config.
#[derive(Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    /// The broker config that sets the cluster-wide default.
    pub broker_synonym: &'static str,
    pub ty: ConfigType,
    pub default: &'static str,
    check: Check,
    pub doc: &'static str,
}

const I32: i64 = i32::MAX as i64;
const I64: i64 = i64::MAX;

macro_rules! def {
    ($name:literal, $syn:literal, $ty:ident, $default:expr, $check:expr, $doc:literal) => {
        TopicConfigDef {
            name: $name,
            broker_synonym: $syn,
            ty: ConfigType::$ty,
            default: $default,
            check: $check,
            doc: $doc,
        }
    };
}

/// Every topic config Spate knows, sorted by name (DescribeConfigs lists them in this order).
pub static TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def!(
        "cleanup.policy",
        "log.cleanup.policy",
        List,
        "delete",
        Check::ListOf(&["compact", "delete"]),
        "Retention policy for old segments: delete, compact, or both."
    ),
    def!(
        "compression.type",
        "compression.type",
        String,
        "producer",
        Check::OneOf(&["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"]),
        "Final compression of the topic's data; producer keeps the producer's codec."
    ),
    def!(
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        Long,
        "86400000",
        Check::Range(0, I64),
        "How long tombstones are kept in compacted topics."
    ),
    def!(
        "file.delete.delay.ms",
        "log.segment.delete.delay.ms",
        Long,
        "60000",
        Check::Range(0, I64),
        "Delay before a deleted segment's file is removed."
    ),
    def!(
        "flush.messages",
        "log.flush.interval.messages",
        Long,
        "9223372036854775807",
        Check::Range(1, I64),
        "Accepted for compatibility: Spate fsyncs before acknowledging."
    ),
    def!(
        "flush.ms",
        "log.flush.interval.ms",
        Long,
        "9223372036854775807",
        Check::Range(0, I64),
        "Accepted for compatibility: Spate fsyncs before acknowledging."
    ),
    def!(
        "index.interval.bytes",
        "log.index.interval.bytes",
        Int,
        "4096",
        Check::Range(0, I32),
        "Bytes between entries of the sparse offset index."
    ),
    def!(
        "max.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms",
        Long,
        "9223372036854775807",
        Check::Range(1, I64),
        "Longest time a record stays uncompacted."
    ),
    def!(
        "max.message.bytes",
        "message.max.bytes",
        Int,
        "1048588",
        Check::Range(0, I32),
        "Largest record batch the topic accepts."
    ),
    def!(
        "message.timestamp.after.max.ms",
        "log.message.timestamp.after.max.ms",
        Long,
        "3600000",
        Check::Range(0, I64),
        "How far in the future a CreateTime timestamp may be."
    ),
    def!(
        "message.timestamp.before.max.ms",
        "log.message.timestamp.before.max.ms",
        Long,
        "9223372036854775807",
        Check::Range(0, I64),
        "How far in the past a CreateTime timestamp may be."
    ),
    def!(
        "message.timestamp.type",
        "log.message.timestamp.type",
        String,
        "CreateTime",
        Check::OneOf(&["CreateTime", "LogAppendTime"]),
        "Whether record timestamps are the producer's or the broker's append time."
    ),
    def!(
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        Double,
        "0.5",
        Check::DoubleRange(0.0, 1.0),
        "Dirty ratio above which the log is compacted."
    ),
    def!(
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        Long,
        "0",
        Check::Range(0, I64),
        "Shortest time a record stays uncompacted."
    ),
    def!(
        "min.insync.replicas",
        "min.insync.replicas",
        Int,
        "1",
        Check::Range(1, I32),
        "Replicas that must acknowledge an acks=all write."
    ),
    def!(
        "preallocate",
        "log.preallocate",
        Boolean,
        "false",
        Check::Bool,
        "Preallocate segment files."
    ),
    def!(
        "retention.bytes",
        "log.retention.bytes",
        Long,
        "-1",
        Check::Range(i64::MIN, I64),
        "Size a partition may grow to before old segments are deleted; -1 for no limit."
    ),
    def!(
        "retention.ms",
        "log.retention.ms",
        Long,
        "604800000",
        Check::Range(-1, I64),
        "Age after which old segments are deleted; -1 for no limit."
    ),
    def!(
        "segment.bytes",
        "log.segment.bytes",
        Int,
        "1073741824",
        Check::Range(1048576, I32),
        "Segment file size."
    ),
    def!(
        "segment.index.bytes",
        "log.index.size.max.bytes",
        Int,
        "10485760",
        Check::Range(4, I32),
        "Offset index size per segment."
    ),
    def!(
        "segment.jitter.ms",
        "log.roll.jitter.ms",
        Long,
        "0",
        Check::Range(0, I64),
        "Random jitter subtracted from segment.ms."
    ),
    def!(
        "segment.ms",
        "log.roll.ms",
        Long,
        "604800000",
        Check::Range(1, I64),
        "Age after which the active segment is rolled."
    ),
    def!(
        "unclean.leader.election.enable",
        "unclean.leader.election.enable",
        Boolean,
        "false",
        Check::Bool,
        "Whether an out-of-sync replica may become leader."
    ),
];

pub fn topic_config(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

pub fn by_broker_synonym(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.broker_synonym == name)
}

impl TopicConfigDef {
    /// Checks `value` and returns it in canonical form, or Kafka's error text.
    pub fn validate(&self, value: &str) -> Result<String, String> {
        let bad = |why: &str| {
            format!(
                "Invalid value {value} for configuration {}: {why}",
                self.name
            )
        };
        let v = value.trim();
        match self.check {
            Check::Range(min, max) => {
                let n: i64 = v.parse().map_err(|_| {
                    bad(match self.ty {
                        ConfigType::Int => "Not a number of type INT",
                        _ => "Not a number of type LONG",
                    })
                })?;
                if self.ty == ConfigType::Int && i32::try_from(n).is_err() {
                    return Err(bad("Not a number of type INT"));
                }
                if n < min || n > max {
                    return Err(bad(&format!("Value must be at least {min}")));
                }
                Ok(n.to_string())
            }
            Check::DoubleRange(min, max) => {
                let n: f64 = v.parse().map_err(|_| bad("Not a number of type DOUBLE"))?;
                if !(min..=max).contains(&n) {
                    return Err(bad(&format!("Value must be in [{min}, {max}]")));
                }
                Ok(v.to_string())
            }
            Check::OneOf(words) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(v))
                .map(|w| w.to_string())
                .ok_or_else(|| bad(&format!("String must be one of: {}", words.join(", ")))),
            Check::ListOf(words) => {
                let mut out = Vec::new();
                for item in v.split(',').map(str::trim) {
                    let w = words
                        .iter()
                        .find(|w| w.eq_ignore_ascii_case(item))
                        .ok_or_else(|| {
                            bad(&format!("String must be one of: {}", words.join(", ")))
                        })?;
                    if !out.contains(w) {
                        out.push(*w);
                    }
                }
                if out.is_empty() {
                    return Err(bad("Empty list"));
                }
                Ok(out.join(","))
            }
            Check::Bool => match v.to_ascii_lowercase().as_str() {
                "true" | "false" => Ok(v.to_ascii_lowercase()),
                _ => Err(bad("Expected value to be either true or false")),
            },
        }
    }
}

/// Broker configs Spate reports that are not topic-config synonyms: static, read-only.
pub fn static_broker_configs(
    node_id: i32,
    default_partitions: i32,
    default_replication_factor: i16,
    advertised: &(String, u16),
) -> Vec<(&'static str, String, ConfigType)> {
    vec![
        (
            "advertised.listeners",
            format!("PLAINTEXT://{}:{}", advertised.0, advertised.1),
            ConfigType::List,
        ),
        (
            "auto.create.topics.enable",
            "false".into(),
            ConfigType::Boolean,
        ),
        ("broker.id", node_id.to_string(), ConfigType::Int),
        (
            "default.replication.factor",
            default_replication_factor.to_string(),
            ConfigType::Int,
        ),
        ("node.id", node_id.to_string(), ConfigType::Int),
        (
            "num.partitions",
            default_partitions.to_string(),
            ConfigType::Int,
        ),
    ]
}

/// Names of [`static_broker_configs`] (read-only).
pub fn static_broker_config_names() -> &'static [&'static str] {
    &[
        "advertised.listeners",
        "auto.create.topics.enable",
        "broker.id",
        "default.replication.factor",
        "node.id",
        "num.partitions",
    ]
}

/// Validates a set of topic overrides (`name → value`), returning canonical values or the
/// first problem as Kafka's INVALID_CONFIG text.
pub fn validate_topic_overrides(
    overrides: &[(String, Option<String>)],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in overrides {
        let def = topic_config(name).ok_or_else(|| format!("Unknown topic config name: {name}"))?;
        let Some(value) = value else {
            return Err(format!(
                "Null value not supported for topic configs: {name}"
            ));
        };
        out.insert(name.clone(), def.validate(value)?);
    }
    Ok(out)
}

/// Rules across a topic's overrides (Kafka's `LogConfig.validateValues`): today
/// `min.compaction.lag.ms` must not exceed `max.compaction.lag.ms` (defaults fill in the one
/// not set). Kafka's INVALID_CONFIG text on failure.
pub fn check_topic_combination(configs: &BTreeMap<String, String>) -> Result<(), String> {
    let num = |name: &str| {
        configs
            .get(name)
            .map(String::as_str)
            .or_else(|| topic_config(name).map(|d| d.default))
            .and_then(|v| v.parse::<i64>().ok())
    };
    if let (Some(min), Some(max)) = (num("min.compaction.lag.ms"), num("max.compaction.lag.ms")) {
        if min > max {
            return Err(format!(
                "conflict topic config setting min.compaction.lag.ms ({min}) > max.compaction.lag.ms ({max})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_compaction_lag_above_max_is_refused() {
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(check_topic_combination(&m(&[("min.compaction.lag.ms", "5")])).is_ok());
        assert!(check_topic_combination(&m(&[
            ("min.compaction.lag.ms", "5"),
            ("max.compaction.lag.ms", "5")
        ]))
        .is_ok());
        assert_eq!(
            check_topic_combination(&m(&[
                ("min.compaction.lag.ms", "6"),
                ("max.compaction.lag.ms", "5")
            ])),
            Err("conflict topic config setting min.compaction.lag.ms (6) > max.compaction.lag.ms (5)".into())
        );
    }

    #[test]
    fn table_is_sorted_and_defaults_are_valid() {
        for pair in TOPIC_CONFIGS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
        for def in TOPIC_CONFIGS {
            assert_eq!(
                def.validate(def.default).as_deref(),
                Ok(def.default),
                "{}",
                def.name
            );
        }
    }

    #[test]
    fn bad_values_get_kafkas_messages() {
        let ms = topic_config("retention.ms").unwrap();
        assert_eq!(
            ms.validate("abc").unwrap_err(),
            "Invalid value abc for configuration retention.ms: Not a number of type LONG"
        );
        assert!(ms.validate("-2").is_err());
        assert_eq!(ms.validate("-1").unwrap(), "-1");
        let cp = topic_config("cleanup.policy").unwrap();
        assert_eq!(cp.validate("compact, delete").unwrap(), "compact,delete");
        assert!(cp.validate("bogus").unwrap_err().contains("cleanup.policy"));
        let seg = topic_config("segment.bytes").unwrap();
        assert!(seg.validate("3000000000").unwrap_err().contains("INT"));
        assert!(seg.validate("100").is_err());
        let ts = topic_config("message.timestamp.type").unwrap();
        assert_eq!(ts.validate("logappendtime").unwrap(), "LogAppendTime");
    }

    #[test]
    fn unknown_and_null_overrides_are_rejected() {
        assert_eq!(
            validate_topic_overrides(&[("foo.bar".into(), Some("1".into()))]).unwrap_err(),
            "Unknown topic config name: foo.bar"
        );
        assert!(validate_topic_overrides(&[("retention.ms".into(), None)]).is_err());
    }
}
