//! Starting and stopping the brokers under test, pinned with `taskset`, and sampling their CPU
//! and memory from /proc.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, Producer};
use serde::{Deserialize, Serialize};

use crate::schedule::mono_ns;

/// One broker configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// spated: fsync before every acknowledgement (its only mode).
    #[serde(rename = "spate")]
    Spate,
    /// Apache Kafka with log.flush.interval.messages=1: fsync before the acknowledgement.
    #[serde(rename = "kafka-fsync")]
    KafkaFsync,
    /// Apache Kafka as shipped: acknowledges from the page cache, no fsync.
    #[serde(rename = "kafka-default")]
    KafkaDefault,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Spate, Target::KafkaFsync, Target::KafkaDefault];

    pub fn key(self) -> &'static str {
        match self {
            Target::Spate => "spate",
            Target::KafkaFsync => "kafka-fsync",
            Target::KafkaDefault => "kafka-default",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Target::Spate => "Spate (fsync before ack)",
            Target::KafkaFsync => "Kafka, flush.messages=1",
            Target::KafkaDefault => "Kafka default (no fsync)",
        }
    }

    pub fn parse(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.key() == s)
            .with_context(|| format!("unknown target {s:?} (spate, kafka-fsync, kafka-default)"))
    }
}

/// Where things are and how to pin them.
#[derive(Debug, Clone)]
pub struct Env {
    pub repo: PathBuf,
    pub spated: PathBuf,
    pub kafka_lib: PathBuf,
    /// Data dirs of the brokers and the probe file: a real disk (not tmpfs).
    pub data_root: PathBuf,
    /// `taskset -c` lists; None = no pinning.
    pub broker_cpus: Option<String>,
    pub client_cpus: Option<String>,
    /// spated shards = the broker's cores.
    pub smp: usize,
    pub keep_data: bool,
}

impl Env {
    /// `cmd` with `taskset -c cpus` in front when pinning.
    pub fn pinned(&self, cpus: &Option<String>, program: &Path) -> Command {
        match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn log4j(&self) -> PathBuf {
        self.repo.join("broker/tests/system/java/log4j2.properties")
    }

    /// A `java` command line for a Kafka main class, as kafka-run-class.sh would build it.
    pub fn java(&self, cpus: &Option<String>, heap: &str, server: bool, main: &str) -> Command {
        let mut cmd = self.pinned(cpus, Path::new("java"));
        cmd.arg(format!("-Xmx{heap}"));
        if server {
            // kafka-server-start.sh's KAFKA_HEAP_OPTS and KAFKA_JVM_PERFORMANCE_OPTS.
            cmd.arg(format!("-Xms{heap}")).args([
                "-server",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
            ]);
        }
        cmd.arg("-Djava.awt.headless=true")
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.log4j().display()
            ))
            .arg("-Dspate.log.level=WARN")
            .arg("-Dlog4j2.disableJmx=true")
            .arg("-cp")
            .arg(format!("{}/*", self.kafka_lib.display()))
            .arg(main);
        cmd
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One /proc sample of the broker.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_ns: u64,
    cpu_ticks: u64,
    rss_kib: u64,
}

fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu_ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    Some(Sample {
        t_ns: mono_ns(),
        cpu_ticks,
        rss_kib,
    })
}

/// Broker CPU and memory over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// % of one core.
    pub cpu_percent: f64,
    pub rss_mib_max: f64,
    pub rss_mib_end: f64,
}

fn usage_between(samples: &[Sample], from_ns: u64, to_ns: u64) -> Option<Usage> {
    let inside: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t_ns >= from_ns && s.t_ns <= to_ns)
        .collect();
    let (a, b) = (inside.first()?, inside.last()?);
    if b.t_ns <= a.t_ns {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let secs = (b.t_ns - a.t_ns) as f64 / 1e9;
    Some(Usage {
        cpu_percent: (b.cpu_ticks - a.cpu_ticks) as f64 / hz / secs * 100.0,
        rss_mib_max: inside.iter().map(|s| s.rss_kib).max()? as f64 / 1024.0,
        rss_mib_end: b.rss_kib as f64 / 1024.0,
    })
}

/// A running broker.
pub struct Running {
    pub target: Target,
    pub bootstrap: String,
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    samples: Arc<Mutex<Vec<Sample>>>,
    stop_sampling: Arc<AtomicBool>,
    keep_data: bool,
}

impl Running {
    /// The broker's CPU and RSS between two mono_ns instants (sampled every 250 ms).
    pub fn usage(&self, from_ns: u64, to_ns: u64) -> Option<Usage> {
        usage_between(&self.samples.lock().unwrap(), from_ns, to_ns)
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text[start..].to_string()
    }

    /// SIGTERM, a short grace, then SIGKILL; the data dir goes (the broker's log is kept
    /// beside it when `keep` or the broker had died).
    pub fn stop(mut self) -> Result<()> {
        self.stop_sampling.store(true, Ordering::Relaxed);
        let died = !self.alive();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = mono_ns() + 5_000_000_000;
        while self.alive() && mono_ns() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if !self.keep_data {
            let _ = fs::remove_dir_all(self.dir.join("data"));
            if !died {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
        Ok(())
    }
}

/// Kafka's server.properties for one node, KRaft, combined broker+controller.
fn kafka_properties(dir: &Path, port: u16, controller_port: u16, fsync: bool) -> String {
    let mut props = vec![
        ("process.roles", "broker,controller".to_string()),
        ("node.id", "0".into()),
        (
            "controller.quorum.voters",
            format!("0@127.0.0.1:{controller_port}"),
        ),
        (
            "listeners",
            format!("PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}"),
        ),
        (
            "advertised.listeners",
            format!("PLAINTEXT://127.0.0.1:{port}"),
        ),
        ("controller.listener.names", "CONTROLLER".into()),
        ("inter.broker.listener.name", "PLAINTEXT".into()),
        (
            "listener.security.protocol.map",
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT".into(),
        ),
        ("log.dirs", dir.join("data").display().to_string()),
        ("num.partitions", "1".into()),
        ("default.replication.factor", "1".into()),
        ("offsets.topic.replication.factor", "1".into()),
        ("transaction.state.log.replication.factor", "1".into()),
        ("transaction.state.log.min.isr", "1".into()),
        (
            "share.coordinator.state.topic.replication.factor",
            "1".into(),
        ),
        ("share.coordinator.state.topic.min.isr", "1".into()),
        ("group.initial.rebalance.delay.ms", "0".into()),
        ("auto.create.topics.enable", "false".into()),
    ];
    if fsync {
        // Equal durability with spated: fsync every record before acknowledging it.
        props.push(("log.flush.interval.messages", "1".into()));
    }
    props.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// `kafka-storage format` once into a template dir; every run copies it (saves a JVM start).
fn kafka_template(env: &Env) -> Result<PathBuf> {
    let template = env.data_root.join("kafka-formatted-template");
    if template.join("data/meta.properties").exists() {
        return Ok(template);
    }
    let _ = fs::remove_dir_all(&template);
    fs::create_dir_all(&template)?;
    let props = template.join("format.properties");
    fs::write(&props, kafka_properties(&template, 9, 10, false))?;
    let id = cluster_id(mono_ns());
    let out = env
        .java(&None, "256m", false, "kafka.tools.StorageTool")
        .args(["format", "--config"])
        .arg(&props)
        .args(["--cluster-id", &id, "--ignore-formatted"])
        .output()
        .context("running kafka-storage format (is java on PATH?)")?;
    if !out.status.success() {
        bail!(
            "kafka-storage format failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(template)
}

/// A Kafka cluster id: 16 bytes, URL-safe base64 without padding (22 characters), not
/// starting with '-' (it would read as an option).
fn cluster_id(seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    let mut x = seed | 1;
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    bytes[0] &= 0x7f; // first character from A..f: never '-'
    let mut bits: u32 = 0;
    let mut n = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        n += 8;
        while n >= 6 {
            n -= 6;
            out.push(ALPHABET[((bits >> n) & 63) as usize] as char);
        }
    }
    if n > 0 {
        out.push(ALPHABET[((bits << (6 - n)) & 63) as usize] as char);
    }
    out
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

/// Ready = answers Metadata and lists node 0.
fn wait_ready(r: &mut Running, timeout: Duration) -> Result<()> {
    let deadline = mono_ns() + timeout.as_nanos() as u64;
    let client: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .set("log_level", "0")
        .create()?;
    loop {
        if !r.alive() {
            bail!("{} exited during startup\n{}", r.target.key(), r.log_tail());
        }
        if let Ok(md) = client
            .client()
            .fetch_metadata(None, Duration::from_millis(1_000))
        {
            if md.brokers().iter().any(|b| b.id() == 0) {
                return Ok(());
            }
        }
        if mono_ns() > deadline {
            bail!(
                "{} not ready within {timeout:?}\n{}",
                r.target.key(),
                r.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Start `target` in a fresh data dir named `name` under the data root.
pub fn start(env: &Env, target: Target, name: &str) -> Result<Running> {
    let dir = env.data_root.join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let bootstrap = format!("127.0.0.1:{port}");
    let log = dir.join("broker.log");
    let mut cmd = match target {
        Target::Spate => {
            fs::create_dir_all(dir.join("data"))?;
            let mut cmd = env.pinned(&env.broker_cpus, &env.spated);
            cmd.arg("--data-dir")
                .arg(dir.join("data"))
                .args(["--kafka-addr", &bootstrap])
                .args(["--advertised-kafka-addr", &bootstrap])
                .args(["--admin-addr", &format!("127.0.0.1:{}", free_port()?)])
                .args(["--smp", &env.smp.to_string(), "--node-id", "0"])
                .env("RUST_LOG", "warn");
            cmd
        }
        Target::KafkaFsync | Target::KafkaDefault => {
            let template = kafka_template(env)?;
            copy_dir(&template.join("data"), &dir.join("data"))?;
            let props = dir.join("server.properties");
            fs::write(
                &props,
                kafka_properties(&dir, port, free_port()?, target == Target::KafkaFsync),
            )?;
            let mut cmd = env.java(&env.broker_cpus, "1G", true, "kafka.Kafka");
            cmd.arg(&props);
            cmd
        }
    };
    let logf = fs::File::create(&log)?;
    cmd.stdin(Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .current_dir(&dir);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}: {cmd:?}", target.key()))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    {
        let (samples, stop, pid) = (samples.clone(), stop_sampling.clone(), child.id());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match sample(pid) {
                    Some(s) => samples.lock().unwrap().push(s),
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }
    let mut r = Running {
        target,
        bootstrap,
        child,
        dir,
        log,
        samples,
        stop_sampling,
        keep_data: env.keep_data,
    };
    if let Err(e) = wait_ready(&mut r, Duration::from_secs(120)) {
        let _ = r.stop();
        return Err(e);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_keys_round_trip() {
        for t in Target::ALL {
            assert_eq!(Target::parse(t.key()).unwrap(), t);
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.key())
            );
        }
        assert!(Target::parse("redpanda").is_err());
    }

    #[test]
    fn kafka_fsync_target_flushes_every_message() {
        let p = kafka_properties(Path::new("/d"), 1, 2, true);
        assert!(p.contains("log.flush.interval.messages=1\n"), "{p}");
        assert!(p.contains("log.dirs=/d/data\n"));
        assert!(p.contains("listeners=PLAINTEXT://127.0.0.1:1,CONTROLLER://127.0.0.1:2\n"));
        assert!(!kafka_properties(Path::new("/d"), 1, 2, false).contains("flush"));
    }

    #[test]
    fn usage_is_cpu_over_wall_time_and_peak_rss() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let s = |t_s: u64, ticks: u64, rss_kib: u64| Sample {
            t_ns: t_s * 1_000_000_000,
            cpu_ticks: ticks,
            rss_kib,
        };
        // Half a core for 2 s, RSS peaking at 200 MiB; the sample at t=9 is outside.
        let samples = [
            s(1, 0, 100 << 10),
            s(2, hz / 2, 200 << 10),
            s(3, hz, 150 << 10),
            s(9, 10 * hz, 900 << 10),
        ];
        let u = usage_between(&samples, 1_000_000_000, 3_000_000_000).unwrap();
        assert!((u.cpu_percent - 50.0).abs() < 1e-9, "{u:?}");
        assert_eq!((u.rss_mib_max, u.rss_mib_end), (200.0, 150.0));
        assert!(usage_between(&samples, 4_000_000_000, 5_000_000_000).is_none());
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        for seed in [0, 1, 42, u64::MAX] {
            let id = cluster_id(seed);
            assert_eq!(id.len(), 22, "{id}");
            assert!(!id.starts_with('-'));
            assert!(id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
        // The last character carries 2 bits, padded with zeros: one of A, Q, g, w.
        assert!("AQgw".contains(cluster_id(7).chars().last().unwrap()));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
    }
}
