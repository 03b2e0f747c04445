//! `spate-perf`: Spate's measuring stick.
//!
//! `probe` measures this machine's limits — raw O_DIRECT sequential write and read bandwidth
//! through io_uring, the 4 KiB write + fdatasync rate and latency, and loopback TCP bandwidth —
//! so every broker figure can be read as a fraction of what the hardware allows.

mod probe;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Probe(args) => probe::run(&args),
    }
}
