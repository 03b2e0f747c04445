//! The command line: nouns and verbs as rpk has them, with examples in every `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::offset_spec::OffsetSpec;
use crate::output::Format;

const MAIN_EXAMPLES: &str = "\
Brokers: --brokers, else SPATE_BROKERS, else 127.0.0.1:9092 (a comma-separated HOST:PORT list).
Exit status: 0 when every item succeeded, 1 when any failed, 2 on a usage error.

Examples:
  spate cluster info
  spate --brokers 10.0.0.1:9092,10.0.0.2:9092 topic list
  spate topic create orders -p 12 -r 3 -c retention.ms=86400000
  seq 1000 | spate topic produce orders
  spate topic consume orders -n 10 --offset start
  spate group describe billing
  spate tune check --data-dir /var/lib/spate
  spate completion bash > /etc/bash_completion.d/spate";

/// spate — operate a Spate (or any Kafka) cluster: topics, records, consumer groups, tuning.
#[derive(Debug, Parser)]
#[command(name = "spate", version, after_help = MAIN_EXAMPLES, propagate_version = true)]
pub struct Cli {
    /// Bootstrap brokers, comma-separated HOST:PORT.
    #[arg(
        long,
        global = true,
        env = "SPATE_BROKERS",
        value_delimiter = ',',
        default_value = "127.0.0.1:9092",
        value_name = "HOST:PORT,..."
    )]
    pub brokers: Vec<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Connect and request timeout in milliseconds.
    #[arg(
        long,
        global = true,
        env = "SPATE_TIMEOUT_MS",
        default_value_t = 30_000,
        value_name = "MS"
    )]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster-wide views: brokers, controller, health.
    #[command(
        subcommand,
        after_help = "Examples:\n  spate cluster info\n  spate cluster health --format json"
    )]
    Cluster(ClusterCmd),
    /// Create, inspect, change and delete topics; produce and consume records.
    #[command(
        subcommand,
        after_help = "\
Examples:
  spate topic create orders -p 12
  spate topic list
  seq 100 | spate topic produce orders
  spate topic consume orders -n 10
  spate topic delete orders"
    )]
    Topic(TopicCmd),
    /// Consumer groups: list, describe (with lag), seek, delete.
    #[command(
        subcommand,
        after_help = "\
Examples:
  spate group list
  spate group describe billing
  spate group seek billing --to start
  spate group delete billing"
    )]
    Group(GroupCmd),
    /// Check this machine's settings for running spated.
    #[command(
        subcommand,
        after_help = "Examples:\n  spate tune check --data-dir /var/lib/spate"
    )]
    Tune(TuneCmd),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  spate completion bash > /etc/bash_completion.d/spate
  spate completion zsh > \"${fpath[1]}/_spate\"
  spate completion fish > ~/.config/fish/completions/spate.fish")]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Cluster id, controller and brokers.
    #[command(after_help = "Examples:\n  spate cluster info\n  spate cluster info --format json")]
    Info,
    /// Healthy unless a broker is down or a partition is leaderless or under-replicated
    /// (exit status 1 when unhealthy).
    #[command(after_help = "Examples:\n  spate cluster health\n  spate cluster health || alert")]
    Health,
}

#[derive(Debug, Subcommand)]
pub enum TopicCmd {
    /// Create topics (one status line per topic).
    #[command(after_help = "\
Examples:
  spate topic create orders
  spate topic create orders payments -p 12 -r 3
  spate topic create logs -c cleanup.policy=compact -c retention.ms=-1
  spate topic create orders -p 6 --dry-run      # validate only")]
    Create {
        /// Topic names.
        #[arg(required = true, value_name = "TOPIC")]
        topics: Vec<String>,
        /// Partitions per topic (-1: the broker's default).
        #[arg(short, long, default_value_t = -1, allow_negative_numbers = true)]
        partitions: i32,
        /// Replication factor (-1: the broker's default).
        #[arg(short = 'r', long = "replicas", default_value_t = -1, allow_negative_numbers = true)]
        replicas: i16,
        /// Topic config KEY=VALUE (repeatable).
        #[arg(short = 'c', long = "config", value_name = "KEY=VALUE", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
        /// Ask the broker to validate only.
        #[arg(long)]
        dry_run: bool,
    },
    /// List topics.
    #[command(after_help = "Examples:\n  spate topic list\n  spate topic list -i --format json")]
    List {
        /// Include internal topics (__consumer_offsets, ...).
        #[arg(short, long)]
        internal: bool,
    },
    /// Summary, configs and partitions (with offsets) of topics.
    #[command(
        after_help = "Examples:\n  spate topic describe orders\n  spate topic describe orders --format json"
    )]
    Describe {
        #[arg(required = true, value_name = "TOPIC")]
        topics: Vec<String>,
    },
    /// Delete topics (one status line per topic).
    #[command(after_help = "Examples:\n  spate topic delete orders\n  spate topic delete a b c")]
    Delete {
        #[arg(required = true, value_name = "TOPIC")]
        topics: Vec<String>,
    },
    /// Change topic configs incrementally (set, delete, append to or subtract from lists).
    #[command(after_help = "\
Examples:
  spate topic alter-config orders --set retention.ms=3600000
  spate topic alter-config orders --delete retention.ms
  spate topic alter-config orders --append cleanup.policy=compact --dry-run")]
    AlterConfig {
        #[arg(required = true, value_name = "TOPIC")]
        topics: Vec<String>,
        /// Set KEY=VALUE (repeatable).
        #[arg(short, long, value_name = "KEY=VALUE", value_parser = parse_kv)]
        set: Vec<(String, String)>,
        /// Remove KEY, back to the default (repeatable).
        #[arg(short, long, value_name = "KEY")]
        delete: Vec<String>,
        /// Append to a list config KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv)]
        append: Vec<(String, String)>,
        /// Subtract from a list config KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv)]
        subtract: Vec<(String, String)>,
        /// Ask the broker to validate only.
        #[arg(long)]
        dry_run: bool,
    },
    /// Add partitions to topics.
    #[command(
        after_help = "Examples:\n  spate topic add-partitions orders -n 6\n  spate topic add-partitions a b -n 1 --dry-run"
    )]
    AddPartitions {
        #[arg(required = true, value_name = "TOPIC")]
        topics: Vec<String>,
        /// How many partitions to add to each topic.
        #[arg(short, long, value_name = "N")]
        num: i32,
        /// Ask the broker to validate only.
        #[arg(long)]
        dry_run: bool,
    },
    /// Produce one record per input line (stdin or --file).
    #[command(after_help = "\
Keyless records go round-robin over the partitions; keyed records to murmur2(key) % partitions,
as Kafka's default partitioner does. A line without the key separator is a record without a key.

Examples:
  seq 100 | spate topic produce orders
  spate topic produce orders --file events.txt --compression zstd
  printf 'user-1:hello\\nuser-2:bye\\n' | spate topic produce orders -k :
  spate topic produce orders -H source=cli -H trace=42 --acks 1 < lines.txt")]
    Produce(ProduceArgs),
    /// Consume records, one per line (or a --format-template, or JSON).
    #[command(after_help = "\
Template directives: %v value, %k key, %t topic, %p partition, %o offset, %d (or %T) timestamp
in ms, %h headers as k=v,k=v, %K/%V key/value length, %% a percent sign; escapes \\n \\t \\r \\\\.
A newline is added unless the template ends with one.

Examples:
  spate topic consume orders -n 10
  spate topic consume orders --offset end                 # follow new records
  spate topic consume orders --offset @-15m -f '%p:%o %k=%v'
  spate topic consume orders -g billing -n 1000          # as a member of group billing
  spate topic consume orders --format json --exit-at-end")]
    Consume(ConsumeArgs),
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Split each line at the first SEP into key and value.
    #[arg(short = 'k', long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE added to every record (repeatable).
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub headers: Vec<(String, String)>,
    /// Batch compression.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "snappy", "lz4", "zstd"])]
    pub compression: String,
    /// Acknowledgements: all (-1), 1 (leader) or 0 (none: nothing is confirmed).
    #[arg(long, default_value = "all", value_parser = parse_acks, allow_hyphen_values = true)]
    pub acks: i16,
    /// Send every record to this partition.
    #[arg(short, long, value_name = "N")]
    pub partition: Option<i32>,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Stop after N records.
    #[arg(short = 'n', long = "num", value_name = "N")]
    pub num: Option<u64>,
    /// Where to start: start, end, N, -N (N before the end), @TIMESTAMP_MS, @-DURATION (e.g.
    /// @-15m). With --group, committed offsets win; this applies where there is none.
    #[arg(short, long, default_value = "start", allow_hyphen_values = true)]
    pub offset: OffsetSpec,
    /// Consume as a member of this consumer group (committing its offsets).
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Only these partitions (comma-separated; not with --group).
    #[arg(
        short,
        long,
        value_delimiter = ',',
        value_name = "N,...",
        conflicts_with = "group"
    )]
    pub partitions: Vec<i32>,
    /// Output template for text format (see below).
    #[arg(short = 'f', long, value_name = "TEMPLATE")]
    pub format_template: Option<String>,
    /// Stop once caught up with the log end offsets seen at start.
    #[arg(short, long)]
    pub exit_at_end: bool,
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// List consumer groups.
    #[command(after_help = "Examples:\n  spate group list\n  spate group list --format json")]
    List,
    /// State, members and per-partition lag (committed offset, log end, lag).
    #[command(
        after_help = "Examples:\n  spate group describe billing\n  spate group describe billing audit --format json"
    )]
    Describe {
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
    /// Move a group's committed offsets (the group must have no active members).
    #[command(after_help = "\
Without --topics, every topic the group has committed offsets for.

Examples:
  spate group seek billing --to start
  spate group seek billing --to end --topics orders
  spate group seek billing --to @-1h
  spate group seek billing --to 1000 --topics orders,payments")]
    Seek {
        group: String,
        /// start, end, N, -N, @TIMESTAMP_MS or @-DURATION.
        #[arg(long, allow_hyphen_values = true)]
        to: OffsetSpec,
        /// Topics to seek (comma-separated).
        #[arg(long, value_delimiter = ',', value_name = "TOPIC,...")]
        topics: Vec<String>,
    },
    /// Delete consumer groups (one status line per group).
    #[command(after_help = "Examples:\n  spate group delete billing\n  spate group delete a b")]
    Delete {
        #[arg(required = true, value_name = "GROUP")]
        groups: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TuneCmd {
    /// memlock limit, aio-max-nr, the data disk's I/O scheduler and filesystem, CPU governor,
    /// io_uring (exit status 1 when a check fails; warnings do not fail).
    #[command(
        after_help = "Examples:\n  spate tune check\n  spate tune check --data-dir /var/lib/spate --format json"
    )]
    Check {
        /// spated's data directory (its disk is the one checked).
        #[arg(
            long,
            env = "SPATE_DATA_DIR",
            default_value = "./data",
            value_name = "DIR"
        )]
        data_dir: PathBuf,
    },
}

/// `KEY=VALUE` (the value may contain `=`).
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "all" | "-1" => Ok(-1),
        "0" => Ok(0),
        "1" => Ok(1),
        _ => Err(format!("expected all, -1, 0 or 1, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("spate").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn consume_offsets_parse() {
        let Command::Topic(TopicCmd::Consume(c)) =
            parse(&["topic", "consume", "t", "--offset", "-5", "-n", "3"]).command
        else {
            panic!("not consume")
        };
        assert_eq!(c.offset, OffsetSpec::BeforeEnd(5));
        assert_eq!(c.num, Some(3));
        let Command::Topic(TopicCmd::Consume(c)) =
            parse(&["topic", "consume", "t", "-o", "@1000"]).command
        else {
            panic!("not consume")
        };
        assert_eq!(c.offset, OffsetSpec::Timestamp(1000));
        assert!(Cli::try_parse_from(["spate", "topic", "consume", "t", "--offset", "x"]).is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "topic",
            "list",
            "--brokers",
            "127.0.0.1:1,127.0.0.1:2",
            "--format",
            "json",
        ]);
        assert_eq!(cli.brokers, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(cli.format, Format::Json);
    }

    #[test]
    fn create_takes_configs_and_negative_defaults() {
        let Command::Topic(TopicCmd::Create {
            topics,
            partitions,
            replicas,
            configs,
            dry_run,
        }) = parse(&[
            "topic",
            "create",
            "a",
            "b",
            "-p",
            "3",
            "-c",
            "x.y=1=2",
            "--dry-run",
        ])
        .command
        else {
            panic!("not create")
        };
        assert_eq!(topics, vec!["a", "b"]);
        assert_eq!((partitions, replicas, dry_run), (3, -1, true));
        assert_eq!(configs, vec![("x.y".to_string(), "1=2".to_string())]);
        assert!(Cli::try_parse_from(["spate", "topic", "create", "a", "-c", "novalue"]).is_err());
    }

    #[test]
    fn acks() {
        assert_eq!(parse_acks("all"), Ok(-1));
        assert_eq!(parse_acks("-1"), Ok(-1));
        assert_eq!(parse_acks("1"), Ok(1));
        assert!(parse_acks("2").is_err());
        let Command::Topic(TopicCmd::Produce(p)) = parse(&[
            "topic", "produce", "t", "--acks", "-1", "-k", ":", "-H", "a=b",
        ])
        .command
        else {
            panic!("not produce")
        };
        assert_eq!(p.acks, -1);
        assert_eq!(p.key_separator.as_deref(), Some(":"));
        assert_eq!(p.headers, vec![("a".to_string(), "b".to_string())]);
    }
}
