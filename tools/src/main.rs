//! `spate`, the operator CLI: noun-verb commands (as Redpanda's rpk) over a small synchronous
//! Kafka client. See `spate --help`.

mod cli;
mod client;
mod commands;
mod offset_spec;
mod output;
mod partitioner;
mod template;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use output::Outcome;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let streaming = matches!(
        cli.command,
        Command::Topic(cli::TopicCmd::Consume(_)) | Command::Topic(cli::TopicCmd::Produce(_))
    );
    if !streaming {
        // `spate topic list | head -1`: end quietly like other tools instead of panicking in
        // print!. Produce and consume handle a closed stdout themselves (to commit and leave
        // their group first).
        // SAFETY: resetting a signal disposition before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let mut ctx = commands::Ctx::new(
        cli.brokers,
        cli.format,
        Duration::from_millis(cli.timeout_ms.max(1)),
    );
    let result = match cli.command {
        Command::Cluster(c) => commands::cluster::run(&mut ctx, c),
        Command::Topic(c) => commands::topic::run(&mut ctx, c),
        Command::Group(c) => commands::group::run(&mut ctx, c),
        Command::Tune(c) => commands::tune::run(&ctx, c),
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "spate", &mut std::io::stdout());
            Ok(Outcome::Success)
        }
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Failure) => ExitCode::from(1),
        Err(e) => {
            eprintln!("spate: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
