//! `spate-perf`: Spate's measuring stick.
//!
//! - `probe` measures this machine's limits — raw O_DIRECT sequential write and read bandwidth
//!   through io_uring, the 4 KiB write + fdatasync rate and latency, and loopback TCP
//!   bandwidth — so every broker figure can be read as a fraction of what the hardware allows.
//! - `run` drives one broker with one workload (perf/workloads/*.yaml) through librdkafka:
//!   fixed-rate or max-rate producers, latency from the intended send time, consumers with
//!   end-to-end latency, throughput over time.
//! - `compare` starts spated and Apache Kafka in turn, pinned to their own cores, runs every
//!   workload against each, then Kafka's own ProducerPerformance, and writes
//!   perf/results/<timestamp>/ (results.json, summary.md, PNG plots).

mod broker;
mod compare;
mod load;
mod plot;
mod probe;
mod producer_perf;
mod schedule;
mod stats;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "spate-perf", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure the disk and loopback limits of this machine.
    ///
    /// Example: cargo run --release -p spate-perf -- probe --dir /var/lib/spate --size-mib 1024
    Probe(probe::ProbeArgs),
    /// Run one workload against one running broker; the last stdout line is the result JSON.
    ///
    /// Example: cargo run --release -p spate-perf -- run --bootstrap 127.0.0.1:9092
    ///          --workload perf/workloads/w2-fixed-rate.yaml --rate 20000
    Run(load::RunArgs),
    /// Spate vs Apache Kafka on this machine: every workload, both brokers, alternating.
    ///
    /// Example: cargo run --release -p spate-perf -- compare --quick
    Compare(compare::CompareArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Probe(args) => probe::run(&args),
        Cmd::Run(args) => load::run(&args),
        Cmd::Compare(args) => compare::run(&args),
    }
}
