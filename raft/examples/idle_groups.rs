//! What idle Raft groups cost: CPU of one thread driving two nodes that share N groups
//! (default 10,000), and the bytes the nodes exchange, with and without quiescence.
//!
//! ```sh
//! cargo run --release -p spate-raft --example idle_groups
//! cargo run --release -p spate-raft --example idle_groups -- --groups 10000 --seconds 20
//! ```
//!
//! Setup: nodes 1 and 2, each group has both as voters (half led by each node), the in-memory
//! store with immediate syncs, the in-memory transport; every envelope is encoded with the
//! wire format and its bytes counted. Default driver settings: 100 ms ticks, heartbeats every
//! 2 ticks, elections after 10–20 ticks, quiescence after 10 idle ticks. The loop is what a
//! shard runs: every tick it calls `tick` and `process` on both drivers and delivers what they
//! sent (and what that produces) until the network is empty, then sleeps to the next tick.
//!
//! Warm-up: elect every group, commit one batch in each, wait until every group is quiescent
//! (or, without quiescence, for the warm-up time). Then measure thread CPU (getrusage
//! RUSAGE_THREAD, user + system) and bytes over the measurement window. Both nodes run on the
//! measured thread, so the CPU is for 2 × N replicas.

use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_raft::{
    Driver, DriverConfig, GroupInit, MemDisk, MemLogStore, MemNetwork, MemTransport, Membership,
    MonotonicClock,
};

type D = Driver<MemLogStore, MemTransport, MonotonicClock>;

#[derive(Clone, Copy, Default)]
struct Traffic {
    bytes: u64,
    envelopes: u64,
}

struct Cluster {
    nodes: [D; 2],
    net: MemNetwork,
    traffic: Traffic,
}

impl Cluster {
    fn new(groups: u64, quiesce: bool) -> Cluster {
        let net = MemNetwork::new();
        let make = |id: u64| {
            let mut cfg = DriverConfig::new(id);
            cfg.quiesce = quiesce;
            let mut d = Driver::new(cfg, net.endpoint(id), MonotonicClock::new());
            let disk = MemDisk::with_auto_sync();
            for g in 1..=groups {
                d.add_group(
                    g,
                    disk.store(g),
                    GroupInit::Bootstrap(Membership::new([1, 2], [])),
                )
                .expect("add group");
            }
            d
        };
        let mut c = Cluster {
            nodes: [make(1), make(2)],
            net,
            traffic: Traffic::default(),
        };
        for g in 1..=groups {
            let leader = (g % 2) as usize;
            c.nodes[leader].campaign(g).expect("campaign");
        }
        c.settle();
        c
    }

    /// Processes both nodes and delivers envelopes until the network is empty.
    fn settle(&mut self) {
        for _ in 0..1000 {
            for d in &mut self.nodes {
                d.process();
            }
            let sent = self.net.take_sent();
            if sent.is_empty() {
                return;
            }
            for s in sent {
                self.traffic.bytes += s.bytes.len() as u64;
                self.traffic.envelopes += 1;
                let _ = self.nodes[(s.to - 1) as usize].receive(&s.bytes);
            }
        }
    }

    fn tick(&mut self) {
        for d in &mut self.nodes {
            d.tick();
        }
        self.settle();
    }

    fn active(&self) -> usize {
        self.nodes.iter().map(|d| d.active_groups()).sum()
    }

    fn group_ticks(&self) -> u64 {
        self.nodes.iter().map(|d| d.metrics().group_ticks).sum()
    }

    /// Runs the shard loop for `dur`, one wake-up per tick.
    fn run_for(&mut self, dur: Duration, until_idle: bool) {
        let tick = Duration::from_millis(self.nodes[0].config().tick_ms);
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < dur {
            self.tick();
            if until_idle && self.active() == 0 {
                return;
            }
            next += tick;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
}

fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage, RUSAGE_THREAD is supported on Linux.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct Measured {
    name: &'static str,
    groups: u64,
    seconds: f64,
    active: usize,
    cpu_pct: f64,
    bytes_per_s: f64,
    envelopes_per_s: f64,
    group_ticks_per_s: f64,
}

fn measure(
    name: &'static str,
    groups: u64,
    quiesce: bool,
    warmup: Duration,
    window: Duration,
) -> Measured {
    eprintln!("{name}: setting up {groups} groups on two nodes ...");
    let mut c = Cluster::new(groups, quiesce);
    for g in 1..=groups {
        let leader = (g % 2) as usize;
        c.nodes[leader]
            .propose(g, Bytes::from_static(b"one batch"))
            .expect("propose");
    }
    c.settle();
    c.run_for(warmup, quiesce);
    eprintln!(
        "{name}: warm-up done, {} of {} replicas ticking; measuring {:?} ...",
        c.active(),
        2 * groups,
        window
    );
    let traffic0 = c.traffic;
    let ticks0 = c.group_ticks();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    c.run_for(window, false);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (thread_cpu() - cpu0).as_secs_f64();
    Measured {
        name,
        groups,
        seconds: wall,
        active: c.active(),
        cpu_pct: 100.0 * cpu / wall,
        bytes_per_s: (c.traffic.bytes - traffic0.bytes) as f64 / wall,
        envelopes_per_s: (c.traffic.envelopes - traffic0.envelopes) as f64 / wall,
        group_ticks_per_s: (c.group_ticks() - ticks0) as f64 / wall,
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let groups = arg("--groups", 10_000);
    let seconds = arg("--seconds", 20);
    let active_seconds = arg("--active-seconds", 10);
    let warmup = Duration::from_secs(arg("--warmup", 10));
    let quiesced = measure(
        "quiesced",
        groups,
        true,
        warmup,
        Duration::from_secs(seconds),
    );
    let ticking = measure(
        "not quiesced",
        groups,
        false,
        Duration::from_secs(3),
        Duration::from_secs(active_seconds),
    );
    println!(
        "{:<14} {:>7} {:>8} {:>9} {:>9} {:>14} {:>12} {:>14}",
        "mode", "groups", "seconds", "ticking", "cpu_%", "bytes/s", "envelopes/s", "group_ticks/s"
    );
    for m in [&quiesced, &ticking] {
        println!(
            "{:<14} {:>7} {:>8.1} {:>9} {:>9.3} {:>14.0} {:>12.1} {:>14.0}",
            m.name,
            m.groups,
            m.seconds,
            m.active,
            m.cpu_pct,
            m.bytes_per_s,
            m.envelopes_per_s,
            m.group_ticks_per_s
        );
    }
    let json = |m: &Measured| {
        format!(
            "{{\"seconds\":{:.1},\"replicas_ticking\":{},\"cpu_pct_of_one_core\":{:.3},\"bytes_per_s\":{:.0},\"envelopes_per_s\":{:.1},\"group_ticks_per_s\":{:.0}}}",
            m.seconds, m.active, m.cpu_pct, m.bytes_per_s, m.envelopes_per_s, m.group_ticks_per_s
        )
    };
    println!(
        "{{\"bench\":\"idle_groups\",\"groups\":{groups},\"nodes\":2,\"threads\":1,\"quiesced\":{},\"not_quiesced\":{}}}",
        json(&quiesced),
        json(&ticking)
    );
}
