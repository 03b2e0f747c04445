//! Deterministic simulation of the multi-raft driver (`cargo test -p spate-raft --test sim`).
//!
//! * `seeds_*`: random runs (N nodes × M groups, faulty network and disks, crashes, partitions,
//!   membership changes, transfers, compaction), a safety phase then a liveness phase.
//!   `SPATE_SIM_SEEDS` (default 400) seeds from `SPATE_SIM_SEED_START` (default 0).
//! * `seeds_segment_*`: the same over the segment-log adapter (spate-storage's partition log
//!   on its crash-injecting directory, with torn tails), for as many seeds
//!   (`SPATE_SIM_SEGMENT_SEEDS` overrides).
//! * `replay`: one seed with a trace: `SPATE_SIM_SEED=123 cargo test -p spate-raft --test sim
//!   -- replay --nocapture` (add `SPATE_SIM_BROKEN=1` for the broken variant,
//!   `SPATE_SIM_SEGMENT=1` for the segment-log mode).
//! * `broken_*`: the deliberately broken driver must be caught.
//! * The scenario tests drive a small cluster by hand, each checking one section of the Raft
//!   paper or one scale feature.

mod checker;
mod cluster;
mod disk;
mod scenarios;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use world::{Outcome, Params, World};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn replay_command(seed: u64, broken: u8, strict: bool, segment: bool) -> String {
    format!(
        "SPATE_SIM_SEED={seed}{}{}{} cargo test -p spate-raft --test sim -- replay --nocapture",
        if broken > 0 {
            format!(" SPATE_SIM_BROKEN={broken}")
        } else {
            String::new()
        },
        if strict { "" } else { " SPATE_SIM_STRICT=0" },
        if segment { " SPATE_SIM_SEGMENT=1" } else { "" }
    )
}

/// Runs one seed; a panic anywhere (raft-rs asserts included) counts as a violation.
pub fn run_seed(seed: u64, broken: u8, strict: bool, trace: bool, segment: bool) -> Outcome {
    let mut p = Params::from_seed(seed);
    p.broken = broken;
    p.segment = segment;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let mut w = World::new(p);
        w.trace = trace;
        w.checker.check_durable_at_send = strict;
        w.run()
    }));
    result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        Outcome {
            violation: Some(format!("panic: {msg}")),
            ..Outcome::default()
        }
    })
}

/// Runs every `stride`-th seed starting at `start + part`.
fn run_part(part: u64, parts: u64, segment: bool) {
    let all = env_u64("SPATE_SIM_SEEDS").unwrap_or(400);
    let count = if segment {
        env_u64("SPATE_SIM_SEGMENT_SEEDS").unwrap_or(all)
    } else {
        all
    };
    let start = env_u64("SPATE_SIM_SEED_START").unwrap_or(0);
    let begun = Instant::now();
    let mut failures = Vec::new();
    let mut totals = Outcome::default();
    let mut ran = 0u64;
    for seed in (start..start + count).filter(|s| s % parts == part) {
        let out = run_seed(seed, 0, true, false, segment);
        ran += 1;
        totals.steps += out.steps;
        totals.committed += out.committed;
        totals.crashes += out.crashes;
        totals.partitions += out.partitions;
        totals.snapshots += out.snapshots;
        totals.membership_changes += out.membership_changes;
        totals.transfers += out.transfers;
        totals.quiesced += out.quiesced;
        totals.malformed_dropped += out.malformed_dropped;
        totals.loads += out.loads;
        totals.segment_transfers += out.segment_transfers;
        totals.segment_transfer_failures += out.segment_transfer_failures;
        totals.recovery_ms = totals.recovery_ms.max(out.recovery_ms);
        if let Some(v) = out.violation {
            failures.push(format!(
                "seed {seed}: {v}\n  replay: {}",
                replay_command(seed, 0, true, segment)
            ));
        }
    }
    println!(
        "{}part {part}/{parts}: {ran} seeds in {:.1?}: {} steps, {} committed entries, {} crashes, \
         {} partitions, {} snapshots installed, {} membership changes, {} transfers, {} \
         quiesce events, {} malformed envelopes/messages dropped, {} loads from segment files, \
         {} snapshots installed by segment transfer ({} transfers failed); \
         slowest recovery after healing {} ms (bound {} ms)",
        if segment { "segment log: " } else { "" },
        begun.elapsed(),
        totals.steps,
        totals.committed,
        totals.crashes,
        totals.partitions,
        totals.snapshots,
        totals.membership_changes,
        totals.transfers,
        totals.quiesced,
        totals.malformed_dropped,
        totals.loads,
        totals.segment_transfers,
        totals.segment_transfer_failures,
        totals.recovery_ms,
        Params::from_seed(0).liveness_ms
    );
    // The segment seeds must exercise segment transfer (snapshots installed from the leader's
    // segments), not only pass without it.
    assert!(
        !segment || ran < 50 || totals.segment_transfers > 0,
        "{ran} segment seeds installed no snapshot by segment transfer"
    );
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Random runs checking §5.1, §5.2, §5.3, §5.4, §5.4.3, §6 and §7 after every step (see
/// `checker.rs`), then liveness (§5.2 elections after healing).
#[test]
fn seeds_part_0() {
    run_part(0, 4, false);
}

/// Random runs checking §5.1, §5.2, §5.3, §5.4, §5.4.3, §6 and §7 after every step (see
/// `checker.rs`), then liveness (§5.2 elections after healing).
#[test]
fn seeds_part_1() {
    run_part(1, 4, false);
}

/// Random runs checking §5.1, §5.2, §5.3, §5.4, §5.4.3, §6 and §7 after every step (see
/// `checker.rs`), then liveness (§5.2 elections after healing).
#[test]
fn seeds_part_2() {
    run_part(2, 4, false);
}

/// Random runs checking §5.1, §5.2, §5.3, §5.4, §5.4.3, §6 and §7 after every step (see
/// `checker.rs`), then liveness (§5.2 elections after healing).
#[test]
fn seeds_part_3() {
    run_part(3, 4, false);
}

/// The same invariants (§5.1–§5.4.3, §6, §7) over the segment-log adapter: Kafka batches in
/// segment files, torn tails, metadata in the metadata store, asynchronous loads.
#[test]
fn seeds_segment_part_0() {
    run_part(0, 2, true);
}

/// The same invariants (§5.1–§5.4.3, §6, §7) over the segment-log adapter: Kafka batches in
/// segment files, torn tails, metadata in the metadata store, asynchronous loads.
#[test]
fn seeds_segment_part_1() {
    run_part(1, 2, true);
}

/// Replays `SPATE_SIM_SEED` of the §5/§6/§7 invariant runs with a full trace (does nothing
/// without it).
#[test]
fn replay() {
    let Some(seed) = env_u64("SPATE_SIM_SEED") else {
        return;
    };
    let broken = env_u64("SPATE_SIM_BROKEN").unwrap_or(0) as u8;
    let strict = env_u64("SPATE_SIM_STRICT").unwrap_or(1) != 0;
    let segment = env_u64("SPATE_SIM_SEGMENT").unwrap_or(0) != 0;
    println!("{:#?}", {
        let mut p = Params::from_seed(seed);
        p.broken = broken;
        p.segment = segment;
        p
    });
    let out = run_seed(seed, broken, strict, true, segment);
    println!("{out:#?}");
    if let Some(v) = out.violation {
        panic!("seed {seed}: {v}");
    }
}

/// Runs a broken driver over seeds until a safety violation is found (liveness failures, which
/// a broken driver also causes, are skipped); returns (seeds tried, first failing seed and its
/// violation).
fn hunt_broken(
    mode: u8,
    strict: bool,
    segment: bool,
    max_seeds: u64,
) -> (u64, Option<(u64, String)>) {
    for seed in 0..max_seeds {
        if let Some(v) = run_seed(seed, mode, strict, false, segment).violation {
            if !v.starts_with("liveness") {
                return (seed + 1, Some((seed, v)));
            }
        }
    }
    (max_seeds, None)
}

fn expect_caught(mode: u8, strict: bool, segment: bool, what: &str) {
    // The hunt stops at the first violation; the bound only limits a checker that lost its
    // teeth.
    let max = 2000;
    let (tried, found) = hunt_broken(mode, strict, segment, max);
    let (seed, violation) =
        found.unwrap_or_else(|| panic!("{what}: the broken variant survived {max} seeds"));
    println!(
        "{what}: caught after {tried} seed(s): seed {seed}: {violation}\n  replay: {}",
        replay_command(seed, mode, strict, segment)
    );
}

/// Proof that the checker has teeth (§5.1: persistent state is updated on stable storage
/// before responding to RPCs). Variant 1 releases vote grants and append acknowledgements
/// before their fsync; the at-send durability check catches it at once.
#[test]
fn broken_ack_before_fsync_is_caught() {
    expect_caught(1, true, false, "ack before fsync");
}

/// The same over the segment-log adapter: acknowledging before the pump made the batches and
/// the term durable (segment fsync, metadata-store write) is caught at once (§5.1).
#[test]
fn broken_ack_before_fsync_is_caught_over_the_segment_log() {
    expect_caught(1, true, true, "ack before fsync, segment log");
}

/// Variant 2 over the segment-log adapter, at-send check on: an append acknowledged before
/// the pump's segment fsync completed is caught against the segment log's durable end (§5.1).
#[test]
fn broken_append_ack_before_fsync_is_caught_over_the_segment_log() {
    expect_caught(2, true, true, "append ack before fsync, segment log");
}

/// Variant 1 over the segment-log adapter with the at-send check off: losing unsynced
/// segment data and metadata writes in crashes has consequences the checker sees (§5.1 hard
/// state regressing, §5.2 double votes, §5.4.3 committed entries lost).
#[test]
fn broken_ack_before_fsync_is_caught_by_its_consequences_over_the_segment_log() {
    expect_caught(
        1,
        false,
        true,
        "ack before fsync, consequences only, segment log",
    );
}

/// Variant 1 with the at-send durability check off: its consequences (hard state regressing
/// across a crash §5.1, double votes §5.2) are caught.
#[test]
fn broken_ack_before_fsync_is_caught_by_its_consequences() {
    expect_caught(1, false, false, "ack before fsync, consequences only");
}

/// Variant 2 acknowledges only log appends before their fsync (votes stay correct), with the
/// at-send check off: a crash loses entries a majority "had", and the checker sees a committed
/// entry lost or overwritten (§5.4.3) or a leader without a committed entry (§5.4). (Most
/// seeds first fail liveness: a leader that believes a follower holds entries it lost sends
/// heartbeats the follower must refuse as malformed.)
#[test]
fn broken_append_ack_before_fsync_loses_committed_entries() {
    expect_caught(
        2,
        false,
        false,
        "append ack before fsync, consequences only",
    );
}
