//! `compare`: spated and Apache Kafka side by side on this machine.
//!
//! For every workload, rate point and round, each broker target runs in turn (alternation),
//! each in a fresh data dir under the same data root (a real disk), pinned to its own cores
//! with `taskset`; the load generator (`spate-perf run`) runs as a child process pinned to the
//! other cores. Then Kafka's own ProducerPerformance runs against each target as a second
//! opinion. Results go to perf/results/<UTC timestamp>/: results.json, summary.md and PNGs.
//! The last line of stdout is one JSON object with the headline numbers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::broker::{self, Env, Target, Usage};
use crate::load::{self, RunResult};
use crate::plot;
use crate::probe::{self, Limits, ProbeArgs};
use crate::producer_perf::{self, PerfSummary};
use crate::schedule::mono_ns;
use crate::stats::{self, median, percent_of, ratio, Latency};
use crate::workload::Workload;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Short runs (each workload's `quick` settings; some workloads are skipped): < 5 min.
    #[arg(long)]
    pub quick: bool,
    /// Workload files (default: every perf/workloads/*.yaml, in name order).
    #[arg(long = "workload", num_args = 1..)]
    pub workloads: Vec<PathBuf>,
    /// Broker targets, in the order each round runs them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "spate,kafka-fsync,kafka-default"
    )]
    pub targets: Vec<String>,
    /// Override every workload's round count.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Results directory (default perf/results/<UTC timestamp>).
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Where broker data dirs and the probe file go; must be a real disk, not tmpfs
    /// (default <repo>/target/perf-data).
    #[arg(long)]
    pub data_root: Option<PathBuf>,
    /// spated binary (default <repo>/target/release/spated, built first unless --no-build).
    #[arg(long)]
    pub spated: Option<PathBuf>,
    #[arg(long)]
    pub no_build: bool,
    /// Apache Kafka jars (default <repo>/target/kafka-jars/lib, fetched if missing).
    #[arg(long)]
    pub kafka_lib: Option<PathBuf>,
    /// Cores for the broker (taskset -c list); spated gets one shard per core.
    #[arg(long, default_value = "1")]
    pub broker_cpus: String,
    /// Cores for the load generator and ProducerPerformance.
    #[arg(long, default_value = "0")]
    pub client_cpus: String,
    /// Do not pin (brokers and clients share every core).
    #[arg(long)]
    pub no_pin: bool,
    #[arg(long)]
    pub no_probe: bool,
    /// Skip Kafka's ProducerPerformance second opinion.
    #[arg(long)]
    pub no_producer_perf: bool,
    /// Keep broker data dirs.
    #[arg(long)]
    pub keep_data: bool,
}

/// One run of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub run: RunResult,
    pub broker: Option<Usage>,
}

/// Medians over a point's rounds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub rounds: usize,
    pub produce_mib_s: f64,
    pub consume_mib_s: f64,
    pub publish: Latency,
    pub e2e: Latency,
    pub backlog_write_mib_s: Option<f64>,
    pub backlog_read_mib_s: Option<f64>,
    pub broker_cpu_percent: Option<f64>,
    pub broker_rss_mib_max: Option<f64>,
    pub client_cpu_percent: f64,
    pub unsent_in_window: u64,
    pub unacked_at_end: u64,
    pub delivery_errors: u64,
    pub create_topics_s: f64,
}

impl Summary {
    pub fn of(rounds: &[Round]) -> Summary {
        let m = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
        let opt = |f: &dyn Fn(&Round) -> Option<f64>| {
            let v: Vec<f64> = rounds.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(&v))
        };
        Summary {
            rounds: rounds.len(),
            produce_mib_s: m(&|r| r.run.produce_mib_s),
            consume_mib_s: m(&|r| r.run.consume_mib_s),
            publish: Latency::median_of(
                &rounds
                    .iter()
                    .map(|r| r.run.publish_latency)
                    .collect::<Vec<_>>(),
            ),
            e2e: Latency::median_of(&rounds.iter().map(|r| r.run.e2e_latency).collect::<Vec<_>>()),
            backlog_write_mib_s: opt(&|r| r.run.backlog.as_ref().map(|b| b.write_mib_s)),
            backlog_read_mib_s: opt(&|r| r.run.backlog.as_ref().map(|b| b.read_mib_s)),
            broker_cpu_percent: opt(&|r| r.broker.map(|u| u.cpu_percent)),
            broker_rss_mib_max: opt(&|r| r.broker.map(|u| u.rss_mib_max)),
            client_cpu_percent: m(&|r| r.run.client_cpu_percent),
            unsent_in_window: rounds.iter().map(|r| r.run.unsent_in_window).sum(),
            unacked_at_end: rounds.iter().map(|r| r.run.unacked_at_end).sum(),
            delivery_errors: rounds.iter().map(|r| r.run.delivery_errors).sum(),
            create_topics_s: m(&|r| r.run.create_topics_s),
        }
    }
}

/// One workload at one offered rate against one target, all rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Point {
    pub workload: String,
    pub target: Target,
    /// Fraction of the base rate (producerRateOf workloads).
    pub fraction: Option<f64>,
    /// Records/s (0 = max).
    pub offered_rate: f64,
    pub offered_mib_s: f64,
    pub warmup_s: f64,
    pub rounds: Vec<Round>,
    pub errors: Vec<String>,
    pub summary: Option<Summary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerfPoint {
    pub target: Target,
    pub result: Option<PerfSummary>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub started_utc: String,
    pub quick: bool,
    pub pinning: String,
    pub spated_smp: usize,
    /// RLIMIT_NOFILE the brokers inherited.
    pub nofile: u64,
    pub limits: Option<Limits>,
    pub points: Vec<Point>,
    pub producer_perf: Vec<PerfPoint>,
    pub total_seconds: f64,
}

/// "20261125T161203Z" for a Unix time.
pub fn utc_stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Number of cores in a taskset list ("1", "0-3", "1,3").
pub fn cpu_count(list: &str) -> Result<usize> {
    let mut n = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                if b < a {
                    bail!("bad cpu range {part}");
                }
                b - a + 1
            }
            None => {
                part.parse::<usize>()?;
                1
            }
        };
    }
    if n == 0 {
        bail!("empty cpu list {list:?}");
    }
    Ok(n)
}

/// Raise this process's open-file limit, which both brokers inherit, as production deployments
/// do (Kafka's docs ask for 100,000+; W6 opens several files per partition). Root may raise
/// the hard limit too. Returns the soft limit now in force.
fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on structs we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let want = 1u64 << 20;
        let up = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &up) != 0 {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("perf/ has a parent")
        .to_path_buf()
}

fn build_spated(repo: &Path) -> Result<()> {
    eprintln!("compare: cargo build --release -p spate-broker --bin spated");
    let st = Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "spate-broker",
            "--bin",
            "spated",
        ])
        .current_dir(repo)
        .status()
        .context("running cargo")?;
    if !st.success() {
        bail!("building spated failed ({st}); if the broker is mid-edit, retry later or pass --no-build");
    }
    Ok(())
}

fn ensure_kafka_jars(repo: &Path, lib: &Path) -> Result<()> {
    let has = std::fs::read_dir(lib)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("kafka-tools-"))
        })
        .unwrap_or(false);
    if has {
        return Ok(());
    }
    let st = Command::new("bash")
        .arg(repo.join("broker/tests/system/fetch-kafka-jars.sh"))
        .arg(lib)
        .status()?;
    if !st.success() {
        bail!("fetching the Kafka jars failed");
    }
    Ok(())
}

/// Run the load generator against a fresh broker.
#[allow(clippy::too_many_arguments)]
fn run_once(
    env: &Env,
    exe: &Path,
    wfile: &Path,
    w: &Workload,
    quick: bool,
    target: Target,
    rate: f64,
    name: &str,
    runs_dir: &Path,
) -> Result<Round> {
    let b = broker::start(env, target, name)?;
    let out = runs_dir.join(format!("{name}.json"));
    let log = runs_dir.join(format!("{name}.log"));
    let logf = std::fs::File::create(&log)?;
    let mut cmd = env.pinned(&env.client_cpus, exe);
    cmd.args(["run", "--bootstrap", &b.bootstrap, "--workload"])
        .arg(wfile)
        .args(["--rate", &rate.to_string(), "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    if quick {
        cmd.arg("--quick");
    }
    let mut child = cmd.spawn().context("starting the load generator")?;
    // Generous: topic creation (W6), backlog write and read, drain.
    let budget = w.warmup_seconds + w.duration_seconds + 600.0;
    let deadline = mono_ns() + (budget * 1e9) as u64;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if mono_ns() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let outcome = match status {
        Some(st) if st.success() => {
            let text = std::fs::read_to_string(&out)?;
            let run: RunResult = serde_json::from_str(&text)?;
            let usage = b.usage(run.window_start_ns, run.window_end_ns);
            Ok(Round { run, broker: usage })
        }
        other => {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail = &tail[tail.len().saturating_sub(2_000)..];
            Err(anyhow::anyhow!(
                "load generator {} ({}): {}\nbroker log tail:\n{}",
                other.map_or("timed out".to_string(), |s| s.to_string()),
                log.display(),
                tail,
                b.log_tail()
            ))
        }
    };
    // Keep the broker's log (its last MiB) beside the run's.
    if let Ok(text) = std::fs::read(b.log_path()) {
        let tail = &text[text.len().saturating_sub(1 << 20)..];
        let _ = std::fs::write(runs_dir.join(format!("{name}.broker.log")), tail);
    }
    b.stop()?;
    outcome
}

/// Offered rate points of a workload: (fraction, records/s).
fn rate_points(w: &Workload, points: &[Point]) -> Vec<(Option<f64>, f64)> {
    match &w.producer_rate_of {
        None => vec![(None, w.producer_rate)],
        Some(r) => {
            let measured = points
                .iter()
                .find(|p| {
                    p.workload == r.workload && p.target.key() == r.broker && p.fraction.is_none()
                })
                .and_then(|p| p.summary.as_ref())
                .map(|s| s.produce_mib_s)
                .filter(|v| *v > 0.0);
            let base = measured.unwrap_or_else(|| {
                eprintln!(
                    "compare: {} has no {} result; using the fallback {} MiB/s",
                    r.workload, r.broker, r.fallback_mib_per_sec
                );
                r.fallback_mib_per_sec
            });
            r.fractions
                .iter()
                .map(|f| (Some(*f), w.rate_for(base, *f)))
                .collect()
        }
    }
}

pub fn run(args: &CompareArgs) -> Result<()> {
    let began = mono_ns();
    let repo = repo_root();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let stamp = utc_stamp(now);
    let results_dir = args
        .results
        .clone()
        .unwrap_or_else(|| repo.join("perf/results").join(&stamp));
    let runs_dir = results_dir.join("runs");
    std::fs::create_dir_all(&runs_dir)?;
    let targets: Vec<Target> = args
        .targets
        .iter()
        .map(|t| Target::parse(t))
        .collect::<Result<_>>()?;
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    let pin = !args.no_pin && online >= 2;
    let smp = if pin {
        cpu_count(&args.broker_cpus)?
    } else {
        online
    };
    let mut env = Env {
        repo: repo.clone(),
        spated: args
            .spated
            .clone()
            .unwrap_or_else(|| repo.join("target/release/spated")),
        kafka_lib: args
            .kafka_lib
            .clone()
            .unwrap_or_else(|| repo.join("target/kafka-jars/lib")),
        data_root: args
            .data_root
            .clone()
            .unwrap_or_else(|| repo.join("target/perf-data")),
        broker_cpus: pin.then(|| args.broker_cpus.clone()),
        client_cpus: pin.then(|| args.client_cpus.clone()),
        smp,
        keep_data: args.keep_data,
    };
    let pinning = if pin {
        format!(
            "broker on CPU {}, load generator and ProducerPerformance on CPU {} (taskset)",
            args.broker_cpus, args.client_cpus
        )
    } else {
        "not pinned: brokers and clients share every core".into()
    };
    std::fs::create_dir_all(&env.data_root)?;
    // Absolute: spated's directory fsync fails on a relative data dir.
    env.data_root = std::fs::canonicalize(&env.data_root)?;
    if !args.no_build {
        build_spated(&repo)?;
    }
    if targets.contains(&Target::Spate) && !env.spated.exists() {
        bail!("no spated at {}", env.spated.display());
    }
    if targets.iter().any(|t| *t != Target::Spate) || !args.no_producer_perf {
        ensure_kafka_jars(&repo, &env.kafka_lib)?;
    }
    let exe = std::env::current_exe()?;
    let nofile = raise_nofile_limit();

    let mut files = args.workloads.clone();
    if files.is_empty() {
        let dir = repo.join("perf/workloads");
        files = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
    }
    let mut workloads = Vec::new();
    for f in &files {
        let w = Workload::load(f)?;
        if args.quick && w.skip_in_quick() {
            eprintln!("compare: --quick skips {}", w.name);
            continue;
        }
        let mut w = w.for_mode(args.quick);
        if let Some(r) = args.rounds {
            w.rounds = r;
        }
        workloads.push((f.clone(), w));
    }

    let limits = if args.no_probe {
        None
    } else {
        let (size, ops, tcp) = if args.quick {
            (256, 1000, 1024)
        } else {
            (1024, 4000, 4096)
        };
        let l = probe::measure(&ProbeArgs::new(env.data_root.clone(), size, ops, tcp))?;
        eprint!("{}", probe::table(&l));
        Some(l)
    };

    let mut points: Vec<Point> = Vec::new();
    let mut seq = 0;
    for (wfile, w) in &workloads {
        for (fraction, rate) in rate_points(w, &points) {
            let mut pts: BTreeMap<Target, Point> = targets
                .iter()
                .map(|t| {
                    (
                        *t,
                        Point {
                            workload: w.name.clone(),
                            target: *t,
                            fraction,
                            offered_rate: rate,
                            offered_mib_s: rate * w.message_size as f64 / stats::MIB,
                            warmup_s: w.warmup_seconds,
                            rounds: Vec::new(),
                            errors: Vec::new(),
                            summary: None,
                        },
                    )
                })
                .collect();
            for round in 0..w.rounds {
                for t in &targets {
                    seq += 1;
                    let name = format!(
                        "{seq:03}-{}-{}{}-r{round}",
                        w.name,
                        t.key(),
                        fraction.map_or(String::new(), |f| format!("-x{f}"))
                    );
                    eprintln!(
                        "compare: [{:.0} s] {name}: {}",
                        (mono_ns() - began) as f64 / 1e9,
                        if rate > 0.0 {
                            format!("{rate:.0} records/s")
                        } else {
                            "max rate".into()
                        }
                    );
                    let p = pts.get_mut(t).unwrap();
                    match run_once(&env, &exe, wfile, w, args.quick, *t, rate, &name, &runs_dir) {
                        Ok(r) => {
                            eprintln!("  {}", load::describe(&r.run));
                            if let Some(u) = r.broker {
                                eprintln!(
                                    "  broker CPU {:.0}% of its core(s), RSS max {:.0} MiB",
                                    u.cpu_percent, u.rss_mib_max
                                );
                            }
                            p.rounds.push(r);
                        }
                        Err(e) => {
                            eprintln!("  FAILED: {e:#}");
                            p.errors.push(format!("{e:#}"));
                        }
                    }
                }
            }
            for (_, mut p) in pts {
                if !p.rounds.is_empty() {
                    p.summary = Some(Summary::of(&p.rounds));
                }
                points.push(p);
            }
        }
    }

    let mut producer_perf = Vec::new();
    if !args.no_producer_perf {
        let records: u64 = if args.quick { 200_000 } else { 1_000_000 };
        for t in &targets {
            seq += 1;
            let name = format!("{seq:03}-producer-perf-{}", t.key());
            eprintln!(
                "compare: [{:.0} s] {name}: ProducerPerformance, {records} × 1 KiB",
                (mono_ns() - began) as f64 / 1e9
            );
            let res = (|| -> Result<PerfSummary> {
                let b = broker::start(&env, *t, &name)?;
                let w = Workload::parse(
                    "name: producer-perf\npartitionsPerTopic: 16\nmessageSize: 1024\n\
                     producersPerTopic: 1\nwarmupSeconds: 0\ndurationSeconds: 1\n",
                )?;
                let r = load::create_topics(&w, &b.bootstrap).and_then(|_| {
                    producer_perf::run(&env, &b.bootstrap, &w.topic_name(0), records, 1024)
                });
                b.stop()?;
                let (s, log) = r?;
                std::fs::write(runs_dir.join(format!("{name}.log")), log)?;
                Ok(s)
            })();
            match res {
                Ok(s) => {
                    eprintln!(
                        "  {:.1} MiB/s, p50 {} p99 {} p99.9 {} ms",
                        s.mib_s, s.p50_ms, s.p99_ms, s.p999_ms
                    );
                    producer_perf.push(PerfPoint {
                        target: *t,
                        result: Some(s),
                        error: None,
                    });
                }
                Err(e) => {
                    eprintln!("  FAILED: {e:#}");
                    producer_perf.push(PerfPoint {
                        target: *t,
                        result: None,
                        error: Some(format!("{e:#}")),
                    });
                }
            }
        }
    }

    let results = Results {
        started_utc: stamp,
        quick: args.quick,
        pinning,
        spated_smp: smp,
        nofile,
        limits,
        points,
        producer_perf,
        total_seconds: (mono_ns() - began) as f64 / 1e9,
    };
    std::fs::write(
        results_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let plots = draw_plots(&results, &results_dir);
    let md = markdown(&results, &plots);
    std::fs::write(results_dir.join("summary.md"), &md)?;
    println!("{md}");
    println!("results: {}", results_dir.display());
    println!("{}", headline(&results, &results_dir));
    Ok(())
}

fn summary_of<'a>(
    r: &'a Results,
    workload: &str,
    target: Target,
    fraction: Option<f64>,
) -> Option<&'a Summary> {
    r.points
        .iter()
        .find(|p| p.workload == workload && p.target == target && p.fraction == fraction)
        .and_then(|p| p.summary.as_ref())
}

/// The point of a latency workload the headline uses: fraction 0.5 if run, else the first.
fn headline_fraction(r: &Results, workload: &str) -> Option<f64> {
    let fr: Vec<f64> = r
        .points
        .iter()
        .filter(|p| p.workload == workload)
        .filter_map(|p| p.fraction)
        .collect();
    fr.iter()
        .copied()
        .find(|f| (*f - 0.5).abs() < 1e-9)
        .or(fr.first().copied())
}

/// The last line: W1 throughput and W2 p99.9 (Spate vs Kafka with equal durability).
pub fn headline(r: &Results, dir: &Path) -> String {
    let tput = |t| summary_of(r, "w1-max-throughput", t, None).map(|s| s.produce_mib_s);
    let frac = headline_fraction(r, "w2-fixed-rate");
    let p999 = |t| summary_of(r, "w2-fixed-rate", t, frac).map(|s| s.publish.p999_ms);
    let (s, k, kd) = (
        tput(Target::Spate),
        tput(Target::KafkaFsync),
        tput(Target::KafkaDefault),
    );
    let (sl, kl, kdl) = (
        p999(Target::Spate),
        p999(Target::KafkaFsync),
        p999(Target::KafkaDefault),
    );
    let rat = |a: Option<f64>, b: Option<f64>| a.zip(b).and_then(|(a, b)| ratio(a, b));
    serde_json::json!({
        "spate_mb_s": s,
        "kafka_mb_s": k,
        "throughput_ratio": rat(s, k),
        "spate_p999_ms": sl,
        "kafka_p999_ms": kl,
        "p999_ratio": rat(sl, kl),
        "kafka_default_mb_s": kd,
        "throughput_ratio_vs_kafka_default": rat(s, kd),
        "kafka_default_p999_ms": kdl,
        "p999_ratio_vs_kafka_default": rat(sl, kdl),
        "units": "MiB/s (2^20 B/s); ms. throughput: W1 max; p99.9: W2 publish latency at the fixed rate",
        "w2_rate_fraction": frac,
        "kafka_durability": "kafka = log.flush.interval.messages=1 (fsync before ack, as spated); kafka_default = no fsync",
        "quick": r.quick,
        "results_dir": dir.display().to_string(),
    })
    .to_string()
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match a.zip(b).and_then(|(a, b)| ratio(a, b)) {
        Some(x) => format!("{x:.2}×"),
        None => "–".into(),
    }
}

/// Markdown: limits, then one table per workload point with every target as a column.
pub fn markdown(r: &Results, plots: &[String]) -> String {
    let mut md = String::new();
    let mode = if r.quick { "--quick" } else { "full" };
    md += &format!(
        "## spate-perf compare ({mode}), {}\n\nPinning: {}; spated --smp {}; open-file limit {}. Durability: Spate fsyncs \
         before every acknowledgement (its only mode); \"Kafka, flush.messages=1\" is Kafka with \
         log.flush.interval.messages=1 (equal durability); \"Kafka default\" acknowledges from the \
         page cache (no fsync: NOT equal durability — Spate has no relaxed mode yet, so its column \
         is the same fsync run). Ratios are Spate ÷ Kafka: above 1 is better for throughput, \
         below 1 is better for latency. MiB/s = 2^20 B/s. Medians over rounds. Total {:.0} s.\n\n",
        r.started_utc, r.pinning, r.spated_smp, r.nofile, r.total_seconds
    );
    if let Some(l) = &r.limits {
        md += "### Machine limits (probe)\n\n";
        md += &probe::table(l);
        md += "\n";
    }
    let targets: Vec<Target> = {
        let mut t: Vec<Target> = r.points.iter().map(|p| p.target).collect();
        t.sort();
        t.dedup();
        t
    };
    let kafka = targets.contains(&Target::KafkaFsync);
    let kdef = targets.contains(&Target::KafkaDefault);
    let mut header = "| metric | Spate (fsync) |".to_string();
    let mut rule = "|---|---|".to_string();
    if kafka {
        header += " Kafka flush.messages=1 | Spate ÷ Kafka |";
        rule += "---|---|";
    }
    if kdef {
        header += " Kafka default (no fsync) | Spate ÷ Kafka default |";
        rule += "---|---|";
    }
    md += "### Side by side\n\n";
    let mut seen: Vec<(String, Option<u64>)> = Vec::new();
    for p in &r.points {
        let key = (p.workload.clone(), p.fraction.map(f64::to_bits));
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let get = |t: Target| summary_of(r, &p.workload, t, p.fraction);
        let rate = if p.offered_rate > 0.0 {
            format!(
                "offered {} MiB/s ({:.0} records/s{})",
                fmt(p.offered_mib_s),
                p.offered_rate,
                p.fraction.map_or(String::new(), |f| format!(
                    ", {:.0}% of Kafka's W1 max",
                    f * 100.0
                ))
            )
        } else {
            "max rate".into()
        };
        md += &format!("#### {} — {rate}\n\n{header}\n{rule}\n", p.workload);
        type Pick = Box<dyn Fn(&Summary) -> Option<f64>>;
        let mut rows: Vec<(String, Pick)> = Vec::new();
        let write_lim = r.limits.as_ref().map(|l| l.seq_write_mib_s);
        let read_lim = r.limits.as_ref().map(|l| l.seq_read_mib_s);
        let spate = get(Target::Spate);
        if spate.and_then(|s| s.backlog_read_mib_s).is_some()
            || get(Target::KafkaFsync)
                .and_then(|s| s.backlog_read_mib_s)
                .is_some()
        {
            rows.push((
                "backlog write MiB/s (max rate)".into(),
                Box::new(|s| s.backlog_write_mib_s),
            ));
            rows.push((
                "catch-up read MiB/s (first to last record)".into(),
                Box::new(|s| s.backlog_read_mib_s),
            ));
        } else {
            rows.push((
                "produced MiB/s (acknowledged)".into(),
                Box::new(|s| Some(s.produce_mib_s)),
            ));
            let lat = if p.offered_rate > 0.0 {
                "publish latency"
            } else {
                "publish latency (saturated: queueing)"
            };
            rows.push((
                format!("{lat} p50 ms"),
                Box::new(|s| Some(s.publish.p50_ms)),
            ));
            rows.push((
                format!("{lat} p99 ms"),
                Box::new(|s| Some(s.publish.p99_ms)),
            ));
            rows.push((
                format!("{lat} p99.9 ms"),
                Box::new(|s| Some(s.publish.p999_ms)),
            ));
            if p.offered_rate > 0.0 {
                rows.push((
                    format!("{lat} p99.99 ms"),
                    Box::new(|s| Some(s.publish.p9999_ms)),
                ));
                rows.push((
                    format!("{lat} max ms"),
                    Box::new(|s| Some(s.publish.max_ms)),
                ));
            }
            if spate.is_some_and(|s| s.e2e.count > 0) {
                rows.push(("end-to-end p50 ms".into(), Box::new(|s| Some(s.e2e.p50_ms))));
                rows.push((
                    "end-to-end p99.9 ms".into(),
                    Box::new(|s| Some(s.e2e.p999_ms)),
                ));
            }
        }
        rows.push((
            "broker CPU % (of its cores)".into(),
            Box::new(|s| s.broker_cpu_percent),
        ));
        rows.push((
            "broker RSS max MiB".into(),
            Box::new(|s| s.broker_rss_mib_max),
        ));
        rows.push((
            "client CPU % (of one core)".into(),
            Box::new(|s| Some(s.client_cpu_percent)),
        ));
        for (name, pick) in &rows {
            let v = |t: Target| get(t).and_then(pick);
            let cell = |t: Target| {
                let x = v(t);
                let mut c = x.map_or("–".into(), fmt);
                // Throughput as a share of the disk's limit.
                let lim = if name.starts_with("catch-up read") {
                    read_lim
                } else {
                    write_lim
                };
                if name.contains("MiB/s") {
                    if let Some(pc) = x.zip(lim).and_then(|(x, l)| percent_of(x, l)) {
                        c += &format!(" ({pc:.0}% of disk)");
                    }
                }
                c
            };
            md += &format!("| {name} | {} |", cell(Target::Spate));
            if kafka {
                md += &format!(
                    " {} | {} |",
                    cell(Target::KafkaFsync),
                    fmt_ratio(v(Target::Spate), v(Target::KafkaFsync))
                );
            }
            if kdef {
                md += &format!(
                    " {} | {} |",
                    cell(Target::KafkaDefault),
                    fmt_ratio(v(Target::Spate), v(Target::KafkaDefault))
                );
            }
            md += "\n";
        }
        let mut notes = Vec::new();
        for t in &targets {
            if let Some(s) = get(*t) {
                if s.unsent_in_window > 0 {
                    notes.push(format!(
                        "{}: {} records due in the window were never sent (rate not sustained; latency understated)",
                        t.label(),
                        s.unsent_in_window
                    ));
                }
                if s.unacked_at_end > 0 {
                    notes.push(format!(
                        "{}: {} records were still unacknowledged 20 s after the end (latency understated)",
                        t.label(),
                        s.unacked_at_end
                    ));
                }
                if s.delivery_errors > 0 {
                    notes.push(format!(
                        "{}: {} delivery errors",
                        t.label(),
                        s.delivery_errors
                    ));
                }
                if s.client_cpu_percent > 80.0 {
                    notes.push(format!(
                        "{}: the load generator used {:.0}% of its core: the client may be the limit",
                        t.label(),
                        s.client_cpu_percent
                    ));
                }
                if s.create_topics_s > 5.0 {
                    notes.push(format!(
                        "{}: CreateTopics took {:.1} s",
                        t.label(),
                        s.create_topics_s
                    ));
                }
            }
            if let Some(pp) = r
                .points
                .iter()
                .find(|q| q.workload == p.workload && q.target == *t && q.fraction == p.fraction)
            {
                for e in &pp.errors {
                    notes.push(format!(
                        "{}: FAILED: {}",
                        t.label(),
                        e.lines().next().unwrap_or("")
                    ));
                }
            }
        }
        if let Some(l) = &r.limits {
            if p.offered_rate > 0.0 {
                notes.push(format!(
                    "disk floor: one 4 KiB write + fdatasync takes p50 {:.3} ms, p99.9 {:.3} ms",
                    l.write_fdatasync_p50_ms, l.write_fdatasync_p999_ms
                ));
            }
        }
        md += "\n";
        for n in notes {
            md += &format!("- {n}\n");
        }
        if !md.ends_with("\n\n") {
            md += "\n";
        }
    }
    if !r.producer_perf.is_empty() {
        md += "### Second opinion: Kafka's ProducerPerformance (16 partitions, 1 KiB, acks=all, linger 5 ms, 128 KiB batches, max rate)\n\n";
        md +=
            "| target | MiB/s | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|\n";
        for p in &r.producer_perf {
            match &p.result {
                Some(s) => {
                    md += &format!(
                        "| {} | {} | {} | {} | {} | {} |\n",
                        p.target.label(),
                        fmt(s.mib_s),
                        fmt(s.p50_ms),
                        fmt(s.p99_ms),
                        fmt(s.p999_ms),
                        fmt(s.max_ms)
                    )
                }
                None => {
                    md += &format!(
                        "| {} | failed: {} | | | | |\n",
                        p.target.label(),
                        p.error
                            .as_deref()
                            .unwrap_or("")
                            .lines()
                            .next()
                            .unwrap_or("")
                    )
                }
            }
        }
        let mib = |t| {
            r.producer_perf
                .iter()
                .find(|p| p.target == t)
                .and_then(|p| p.result.as_ref())
                .map(|s| s.mib_s)
        };
        md += &format!(
            "\nSpate ÷ Kafka flush.messages=1: {}; Spate ÷ Kafka default: {}\n\n",
            fmt_ratio(mib(Target::Spate), mib(Target::KafkaFsync)),
            fmt_ratio(mib(Target::Spate), mib(Target::KafkaDefault))
        );
    }
    if !plots.is_empty() {
        md += "### Plots\n\n";
        for p in plots {
            md += &format!("- {p}\n");
        }
    }
    md
}

fn s_bucket(s: &stats::Series) -> f64 {
    s.bucket_ms.max(1) as f64
}

/// PNGs; returns their file names (or why none were drawn).
fn draw_plots(r: &Results, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut targets: Vec<Target> = r.points.iter().map(|p| p.target).collect();
    targets.sort();
    targets.dedup();
    let mut workloads: Vec<&str> = r.points.iter().map(|p| p.workload.as_str()).collect();
    workloads.dedup();
    for w in &workloads {
        // Latency vs offered rate for workloads run at several rates.
        let fixed: Vec<&Point> = r
            .points
            .iter()
            .filter(|p| p.workload == *w && p.offered_rate > 0.0 && p.summary.is_some())
            .collect();
        let mut rates: Vec<u64> = fixed.iter().map(|p| p.offered_rate.to_bits()).collect();
        rates.sort_unstable();
        rates.dedup();
        if !fixed.is_empty() {
            let curves: Vec<plot::RateCurve> = targets
                .iter()
                .map(|t| {
                    let mut points: Vec<(f64, f64, f64, f64)> = fixed
                        .iter()
                        .filter(|p| p.target == *t)
                        .map(|p| {
                            let s = p.summary.as_ref().unwrap();
                            (
                                p.offered_mib_s,
                                s.publish.p50_ms,
                                s.publish.p99_ms,
                                s.publish.p999_ms,
                            )
                        })
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    plot::RateCurve {
                        label: t.label().into(),
                        points,
                    }
                })
                .collect();
            let name = format!("latency_vs_rate_{w}.png");
            match plot::latency_vs_rate(
                &dir.join(&name),
                &format!("{w}: publish latency vs offered rate"),
                &curves,
            ) {
                Ok(()) => out.push(name),
                Err(e) => out.push(format!("{name} not drawn: {e:#}")),
            }
        }
        // Throughput over time of the first round of the first point per target.
        let series: Vec<(String, Vec<f64>, u64)> = targets
            .iter()
            .filter_map(|t| {
                let p = r
                    .points
                    .iter()
                    .filter(|p| p.workload == *w && p.target == *t)
                    .max_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate))?;
                let run = &p.rounds.first()?.run;
                let (s, keep) = if run.backlog.is_some() {
                    // The last bucket is cut short by the end of the read.
                    let n = run.consume_series.bytes.len();
                    (&run.consume_series, n.saturating_sub(1))
                } else {
                    // Whole buckets up to the end of the window (the drain after it is ragged).
                    let secs = run.warmup_s + run.duration_s;
                    (
                        &run.produce_series,
                        (secs * 1000.0 / s_bucket(&run.produce_series)) as usize,
                    )
                };
                let mut v = s.mib_per_sec();
                v.truncate(keep);
                Some((t.label().to_string(), v, s.bucket_ms))
            })
            .collect();
        if !series.is_empty() {
            let backlog = r
                .points
                .iter()
                .any(|p| p.workload == *w && p.rounds.iter().any(|x| x.run.backlog.is_some()));
            let what = if backlog {
                "catch-up read"
            } else {
                "acknowledged produce"
            };
            let warm = r
                .points
                .iter()
                .find(|p| p.workload == *w)
                .map_or(0.0, |p| p.warmup_s);
            let name = format!("throughput_{w}.png");
            let bucket_s = series[0].2 as f64 / 1000.0;
            let series: Vec<(String, Vec<f64>)> =
                series.into_iter().map(|(l, v, _)| (l, v)).collect();
            let (title, x_desc) = if backlog {
                (
                    format!(
                        "{w}: {what} MiB/s per {:.0} ms (round 1)",
                        bucket_s * 1000.0
                    ),
                    "seconds since the read started",
                )
            } else {
                (
                    format!("{w}: {what} MiB/s per second (round 1, highest rate)"),
                    "seconds since the producers started",
                )
            };
            match plot::throughput_over_time(
                &dir.join(&name),
                &title,
                x_desc,
                &series,
                bucket_s,
                if backlog { 0.0 } else { warm },
            ) {
                Ok(()) => out.push(name),
                Err(e) => out.push(format!("{name} not drawn: {e:#}")),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Window;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_764_087_123), "20251125T161203Z");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_count("1").unwrap(), 1);
        assert_eq!(cpu_count("0-3").unwrap(), 4);
        assert_eq!(cpu_count("1,3,5-6").unwrap(), 4);
        assert!(cpu_count("").is_err());
        assert!(cpu_count("3-1").is_err());
    }

    fn round(mib_s: f64, p999: f64) -> Round {
        Round {
            run: RunResult {
                produce_mib_s: mib_s,
                produce: Window {
                    bytes: (mib_s * 10.0) as u64 * (1 << 20),
                    records: 1,
                    seconds: 10.0,
                },
                publish_latency: Latency {
                    count: 100,
                    p999_ms: p999,
                    ..Latency::default()
                },
                ..RunResult::default()
            },
            broker: None,
        }
    }

    fn point(workload: &str, target: Target, fraction: Option<f64>, rounds: Vec<Round>) -> Point {
        Point {
            workload: workload.into(),
            target,
            fraction,
            offered_rate: if fraction.is_some() { 1000.0 } else { 0.0 },
            offered_mib_s: 1.0,
            warmup_s: 1.0,
            summary: Some(Summary::of(&rounds)),
            rounds,
            errors: vec![],
        }
    }

    fn results() -> Results {
        Results {
            started_utc: "x".into(),
            quick: true,
            pinning: "p".into(),
            spated_smp: 1,
            nofile: 1024,
            limits: None,
            points: vec![
                point(
                    "w1-max-throughput",
                    Target::Spate,
                    None,
                    vec![round(100.0, 9.0), round(120.0, 9.0), round(110.0, 9.0)],
                ),
                point(
                    "w1-max-throughput",
                    Target::KafkaFsync,
                    None,
                    vec![round(50.0, 9.0), round(60.0, 9.0)],
                ),
                point(
                    "w1-max-throughput",
                    Target::KafkaDefault,
                    None,
                    vec![round(220.0, 9.0)],
                ),
                point(
                    "w2-fixed-rate",
                    Target::Spate,
                    Some(0.25),
                    vec![round(1.0, 100.0)],
                ),
                point(
                    "w2-fixed-rate",
                    Target::Spate,
                    Some(0.5),
                    vec![round(1.0, 2.0)],
                ),
                point(
                    "w2-fixed-rate",
                    Target::KafkaFsync,
                    Some(0.5),
                    vec![round(1.0, 8.0)],
                ),
                point(
                    "w2-fixed-rate",
                    Target::KafkaDefault,
                    Some(0.5),
                    vec![round(1.0, 1.0)],
                ),
            ],
            producer_perf: vec![],
            total_seconds: 1.0,
        }
    }

    #[test]
    fn headline_takes_medians_and_divides_spate_by_kafka() {
        let line = headline(&results(), Path::new("/r"));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["spate_mb_s"], 110.0); // median of 100, 120, 110
        assert_eq!(v["kafka_mb_s"], 55.0); // median of 50, 60
        assert_eq!(v["throughput_ratio"], 2.0);
        assert_eq!(v["spate_p999_ms"], 2.0); // the 0.5 point, not 0.25
        assert_eq!(v["kafka_p999_ms"], 8.0);
        assert_eq!(v["p999_ratio"], 0.25);
        assert_eq!(v["kafka_default_mb_s"], 220.0);
        assert_eq!(v["throughput_ratio_vs_kafka_default"], 0.5);
        assert_eq!(v["w2_rate_fraction"], 0.5);
    }

    #[test]
    fn headline_without_kafka_has_null_ratios() {
        let mut r = results();
        r.points.retain(|p| p.target == Target::Spate);
        let v: serde_json::Value = serde_json::from_str(&headline(&r, Path::new("/r"))).unwrap();
        assert_eq!(v["spate_mb_s"], 110.0);
        assert!(v["kafka_mb_s"].is_null() && v["throughput_ratio"].is_null());
    }

    #[test]
    fn markdown_has_a_row_per_metric_and_the_ratio() {
        let md = markdown(&results(), &[]);
        assert!(md.contains("#### w1-max-throughput — max rate"), "{md}");
        assert!(
            md.contains("| produced MiB/s (acknowledged) | 110 | 55.0 | 2.00× | 220 | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| publish latency p99.9 ms | 2.00 | 8.00 | 0.25× | 1.00 | 2.00× |"),
            "{md}"
        );
    }

    #[test]
    fn rate_points_use_the_measured_base_or_the_fallback() {
        let w = Workload::parse(
            "name: w2-fixed-rate\npartitionsPerTopic: 1\nmessageSize: 1024\nproducersPerTopic: 1\n\
             producerRateOf: { workload: w1-max-throughput, fractions: [0.5, 0.25], fallbackMibPerSec: 10 }\n\
             warmupSeconds: 0\ndurationSeconds: 1\n",
        )
        .unwrap();
        // Kafka (fsync) W1 median is 55 MiB/s: half of it is 27.5 MiB/s of 1 KiB records.
        let pts = rate_points(&w, &results().points);
        assert_eq!(pts, vec![(Some(0.5), 28_160.0), (Some(0.25), 14_080.0)]);
        assert_eq!(rate_points(&w, &[])[0], (Some(0.5), 5_120.0));
    }
}
