//! The load generator: one workload against one broker, through librdkafka.
//!
//! Producers run open-loop: at a fixed rate each record has an intended send time (see
//! [`crate::schedule`]) and its publish latency runs from that time to the acknowledgement;
//! at rate 0 they send as fast as librdkafka accepts records and latency runs from the send
//! call. Every value starts with its intended send time (CLOCK_MONOTONIC ns) and sequence, so
//! a consumer measures end-to-end latency from the same origin. Consumers never join a group:
//! partitions are assigned directly, from the beginning (topics are created fresh per run).
//!
//! Only records intended (publish, end-to-end latency) or acknowledged/consumed (throughput)
//! inside the measurement window — after the warm-up, before the end — count.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::bindings as rdsys;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::{Deserialize, Serialize};

use crate::schedule::{mono_ns, sleep_until, Schedule};
use crate::stats::{self, Latency, Series, Window};
use crate::workload::{KeyDistributor, Workload, HEADER_BYTES};

/// Throughput-over-time bucket.
const BUCKET_MS: u64 = 1_000;
/// The same for a catch-up read.
const BACKLOG_BUCKET_MS: u64 = 100;
/// After the window closes: how long to keep sending records that were due inside it, and to
/// wait for acknowledgements and for consumers to catch up.
const DRAIN: Duration = Duration::from_secs(20);
/// Partitions created per CreateTopics/CreatePartitions request.
const PARTITIONS_PER_REQUEST: u32 = 5_000;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Broker to drive (host:port, loopback only).
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Workload file (perf/workloads/*.yaml).
    #[arg(long)]
    pub workload: PathBuf,
    /// Use the workload's `quick` durations and sizes.
    #[arg(long)]
    pub quick: bool,
    /// Records per second over all producers, overriding the workload's (0 = max). Required
    /// in effect for `producerRateOf` workloads, else their fallback is used.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the result JSON here (it is also the last line of stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// W5's catch-up read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Backlog {
    pub bytes: u64,
    pub records: u64,
    pub write_mib_s: f64,
    /// From the first record consumed to the last (the client's start-up excluded).
    pub read_mib_s: f64,
    /// From starting the consumers to the last record.
    pub read_seconds: f64,
    /// From starting the consumers to the first record (connect, metadata, ListOffsets).
    pub first_record_seconds: f64,
    pub page_cache_dropped: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub workload: String,
    pub bootstrap: String,
    pub message_size: usize,
    pub partitions: u64,
    pub producers: u32,
    pub consumers: u32,
    /// Offered records/s (0 = max) and the same in MiB/s.
    pub offered_rate: f64,
    pub offered_mib_s: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Acknowledged inside the window.
    pub produce: Window,
    pub produce_mib_s: f64,
    /// Intended send → acknowledgement.
    pub publish_latency: Latency,
    /// Consumed inside the window.
    pub consume: Window,
    pub consume_mib_s: f64,
    /// Intended send → consumed.
    pub e2e_latency: Latency,
    /// Per-second acknowledged and consumed bytes from the start of the producers.
    pub produce_series: Series,
    pub consume_series: Series,
    pub delivery_errors: u64,
    /// `send` calls refused because librdkafka's queue was full (retried).
    pub queue_full_retries: u64,
    /// Fixed rate: records due inside the window that were never sent (the client or the
    /// broker could not keep up; their latency is not in the histogram).
    pub unsent_in_window: u64,
    /// Records sent but not acknowledged by the end of the drain (their latency is missing).
    pub unacked_at_end: u64,
    /// Fixed rate: the furthest a producer fell behind its schedule.
    pub max_schedule_lag_ms: f64,
    /// CPU of this (client) process over the window, % of one core.
    pub client_cpu_percent: f64,
    pub backlog: Option<Backlog>,
    /// The measurement window in CLOCK_MONOTONIC ns (the runner matches its /proc samples of
    /// the broker to it).
    pub window_start_ns: u64,
    pub window_end_ns: u64,
    /// How long CreateTopics took until every partition had a leader.
    pub create_topics_s: f64,
}

/// Start, warm-up end and end of the measurement, in mono_ns.
#[derive(Debug, Clone, Copy)]
struct Timing {
    t0: u64,
    warm_end: u64,
    end: u64,
}

impl Timing {
    fn in_window(&self, t: u64) -> bool {
        t >= self.warm_end && t < self.end
    }
}

/// librdkafka's own warnings and errors, the first few of them, on stderr.
struct Noisy {
    said: AtomicU64,
}

impl Noisy {
    fn new() -> Noisy {
        Noisy {
            said: AtomicU64::new(0),
        }
    }
    fn say(&self, what: &str) {
        let n = self.said.fetch_add(1, Ordering::Relaxed);
        if n < 20 {
            eprintln!("librdkafka: {what}");
        } else if n == 20 {
            eprintln!("librdkafka: (more messages suppressed)");
        }
    }
}

struct ClientCtx {
    noisy: Noisy,
}

fn is_warning(level: RDKafkaLogLevel) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning
    )
}

impl ConsumerContext for ClientCtx {}

impl ClientContext for ClientCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        if is_warning(level) {
            self.noisy.say(&format!("{fac} {msg}"));
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.noisy.say(&format!("{error}: {reason}"));
    }
}

#[derive(Default)]
struct ProduceStats {
    hist: Option<Histogram<u64>>,
    series: Series,
    window: Window,
    acked: u64,
    acked_bytes: u64,
    errors: u64,
    last_ack: u64,
}

struct ProducerCtx {
    timing: Mutex<Option<Timing>>,
    stats: Mutex<ProduceStats>,
    noisy: Noisy,
    acked_total: Arc<AtomicU64>,
}

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        if is_warning(level) {
            self.noisy.say(&format!("{fac} {msg}"));
        }
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.noisy.say(&format!("{error}: {reason}"));
    }
}

impl ProducerContext for ProducerCtx {
    /// The record's intended send time (mono_ns).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, intended: usize) {
        let now = mono_ns();
        let intended = intended as u64;
        let timing = *self.timing.lock().unwrap();
        let mut s = self.stats.lock().unwrap();
        match result {
            Ok(m) => {
                let bytes = m.payload_len() as u64;
                s.acked += 1;
                s.acked_bytes += bytes;
                s.last_ack = now;
                self.acked_total.fetch_add(1, Ordering::Relaxed);
                if let Some(t) = timing {
                    s.series.add(now.saturating_sub(t.t0), bytes);
                    if t.in_window(now) {
                        s.window.bytes += bytes;
                        s.window.records += 1;
                    }
                    if t.in_window(intended) {
                        if let Some(h) = s.hist.as_mut() {
                            stats::record_ns(h, now.saturating_sub(intended));
                        }
                    }
                }
            }
            Err((e, _)) => {
                s.errors += 1;
                drop(s);
                self.noisy.say(&format!("delivery failed: {e}"));
            }
        }
    }
}

type Prod = ThreadedProducer<ProducerCtx>;

fn client_config(
    bootstrap: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    for (k, v) in extra {
        c.set(k, v);
    }
    c
}

fn producer_config(w: &Workload, bootstrap: &str) -> ClientConfig {
    // As the stopgap ProducerPerformance runs: acks=all, 5 ms linger, 128 KiB batches, no
    // compression; a 32 MiB queue like the Java client's buffer.memory. The workload's
    // producerConfig goes on top.
    let mut c = client_config(bootstrap, &Default::default());
    for (k, v) in [
        ("acks", "all"),
        ("linger.ms", "5"),
        ("batch.size", "131072"),
        ("compression.type", "none"),
        ("queue.buffering.max.kbytes", "32768"),
        ("partitioner", "murmur2_random"),
    ] {
        c.set(k, v);
    }
    for (k, v) in &w.producer_config {
        c.set(k, v);
    }
    c
}

fn consumer_config(w: &Workload, bootstrap: &str) -> ClientConfig {
    let mut c = client_config(bootstrap, &Default::default());
    for (k, v) in [
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "false"),
    ] {
        c.set(k, v);
    }
    for (k, v) in &w.consumer_config {
        c.set(k, v);
    }
    c
}

/// Create the workload's topics (broker defaults: the durability setting is the broker's) and
/// wait until every partition has a leader.
pub fn create_topics(w: &Workload, bootstrap: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, &Default::default())
        .set("socket.timeout.ms", "180000")
        .create()
        .context("creating the admin client")?;
    let names: Vec<String> = (0..w.topics).map(|i| w.topic_name(i)).collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(170)))
        .request_timeout(Some(Duration::from_secs(175)));
    let check = |results: Vec<rdkafka::admin::TopicResult>| -> Result<()> {
        for r in results {
            if let Err((name, code)) = r {
                bail!("creating topic {name}: {code:?}");
            }
        }
        Ok(())
    };
    // One topic per request, and at most PARTITIONS_PER_REQUEST partitions at a time (then
    // CreatePartitions): Kafka's controller refuses one operation of more than 10,000
    // records, a topic record plus one per partition.
    for name in &names {
        let first = w.partitions_per_topic.min(PARTITIONS_PER_REQUEST);
        let topic = NewTopic::new(name, first as i32, TopicReplication::Fixed(1));
        check(
            futures_lite::future::block_on(admin.create_topics([&topic], &opts))
                .context("CreateTopics")?,
        )?;
        let mut have = first;
        while have < w.partitions_per_topic {
            have = (have + PARTITIONS_PER_REQUEST).min(w.partitions_per_topic);
            let more = NewPartitions::new(name, have as usize);
            check(
                futures_lite::future::block_on(admin.create_partitions([&more], &opts))
                    .context("CreatePartitions")?,
            )?;
        }
    }
    let deadline = mono_ns() + 180_000_000_000;
    for name in &names {
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(10));
            let ready = md.as_ref().is_ok_and(|md| {
                md.topics().iter().any(|t| {
                    t.name() == name
                        && t.error().is_none()
                        && t.partitions().len() == w.partitions_per_topic as usize
                        && t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none())
                })
            });
            if ready {
                break;
            }
            if mono_ns() > deadline {
                bail!("topic {name} has no leader for every partition after 180 s: {md:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// xorshift64*: payload bytes and random keys, deterministic per producer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A few distinct values per producer, each `random_bytes_ratio` random after the header.
fn payload_pool(w: &Workload, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let random = ((w.message_size - HEADER_BYTES) as f64 * w.random_bytes_ratio).round() as usize;
    (0..8)
        .map(|_| {
            let mut v = vec![0u8; w.message_size];
            for b in &mut v[HEADER_BYTES..HEADER_BYTES + random] {
                *b = rng.next() as u8;
            }
            v
        })
        .collect()
}

/// When a producer stops taking new records.
#[derive(Clone, Copy)]
enum Stop {
    /// At the end of the window (fixed rate: records due before it are still sent).
    At(u64),
    /// After this many records (the backlog write).
    Records(u64),
}

#[derive(Default)]
struct LoopStats {
    queue_full: u64,
    unsent: u64,
    max_lag_ns: u64,
}

struct ProducerJob {
    producer: Arc<Prod>,
    topic: String,
    partitions: i32,
    index: u32,
    of: u32,
    rate: f64,
    stop: Stop,
    start: u64,
}

fn producer_loop(w: &Workload, job: ProducerJob) -> LoopStats {
    let mut ls = LoopStats::default();
    let mut pool = payload_pool(w, u64::from(job.index) + 1);
    let mut rng = Rng(0x5eed ^ (u64::from(job.index) << 32) | 1);
    let mut key = String::new();
    let mut sched = (job.rate > 0.0).then(|| Schedule::new(job.start, job.rate, job.index, job.of));
    let hard_deadline = match job.stop {
        Stop::At(end) => end + DRAIN.as_nanos() as u64,
        Stop::Records(_) => u64::MAX,
    };
    let mut seq: u64 = 0;
    sleep_until(job.start, Duration::from_secs(5));
    loop {
        let intended = match (&mut sched, job.stop) {
            (Some(s), Stop::At(end)) => {
                let next = s.next_intended();
                if next >= end {
                    break;
                }
                let now = mono_ns();
                if next > now {
                    sleep_until(next, Duration::from_millis(10));
                    continue;
                }
                if now > hard_deadline {
                    ls.unsent = s.count_before(end) - s.taken();
                    break;
                }
                ls.max_lag_ns = ls.max_lag_ns.max(now - next);
                s.take().1
            }
            (_, Stop::At(end)) => {
                let now = mono_ns();
                if now >= end {
                    break;
                }
                now
            }
            (_, Stop::Records(n)) => {
                if seq >= n {
                    break;
                }
                mono_ns()
            }
        };
        let value = &mut pool[(seq % 8) as usize];
        value[..8].copy_from_slice(&intended.to_le_bytes());
        value[8..16].copy_from_slice(&seq.to_le_bytes());
        let mut record =
            BaseRecord::with_opaque_to(&job.topic, intended as usize).payload(&value[..]);
        key.clear();
        match w.key_distributor {
            KeyDistributor::NoKey => {}
            KeyDistributor::KeyRoundRobin => {
                let _ = write!(key, "k{}", seq % w.key_count);
                record = record.key(key.as_bytes());
            }
            KeyDistributor::Random => {
                let _ = write!(key, "k{}", rng.next() % w.key_count);
                record = record.key(key.as_bytes());
            }
            KeyDistributor::PartitionRoundRobin => {
                let p = (seq + u64::from(job.index)) % job.partitions as u64;
                record = record.partition(p as i32);
            }
        }
        loop {
            match job.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    ls.queue_full += 1;
                    record = r;
                    if mono_ns() > hard_deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err((e, _)) => {
                    eprintln!("send failed: {e}");
                    break;
                }
            }
        }
        seq += 1;
    }
    ls
}

#[derive(Default)]
struct ConsumeStats {
    hist: Option<Histogram<u64>>,
    series: Series,
    window: Window,
}

struct ConsumerJob {
    config: ClientConfig,
    bucket_ms: u64,
    assignment: Vec<(String, i32)>,
    timing: Arc<Mutex<Option<Timing>>>,
    consumed: Arc<AtomicU64>,
    consumed_bytes: Arc<AtomicU64>,
    /// mono_ns of the first record any consumer got (0 = none yet).
    first_record: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ConsumeStats>>,
}

/// A consumer of fixed partitions without any consumer group: librdkafka's legacy
/// per-partition API (`rd_kafka_consume_start_queue`), since `assign` needs a group.id and
/// with one librdkafka talks to the group coordinator (FindCoordinator) even when it never
/// joins. Every assigned partition feeds one queue, read in batches.
struct PartitionConsumer {
    consumer: BaseConsumer<ClientCtx>,
    queue: *mut rdsys::rd_kafka_queue_t,
    started: Vec<(*mut rdsys::rd_kafka_topic_t, i32)>,
    topics: Vec<*mut rdsys::rd_kafka_topic_t>,
}

impl PartitionConsumer {
    fn new(config: &ClientConfig, assignment: &[(String, i32)]) -> Result<PartitionConsumer> {
        let consumer: BaseConsumer<ClientCtx> = config
            .create_with_context(ClientCtx {
                noisy: Noisy::new(),
            })
            .context("creating a consumer")?;
        let rk = consumer.client().native_ptr();
        // SAFETY: rk is the live client owned by `consumer`, which outlives the queue and the
        // topic handles (Drop releases them first).
        let queue = unsafe { rdsys::rd_kafka_queue_new(rk) };
        let mut pc = PartitionConsumer {
            consumer,
            queue,
            started: Vec::new(),
            topics: Vec::new(),
        };
        let mut handles: std::collections::BTreeMap<&str, *mut rdsys::rd_kafka_topic_t> =
            Default::default();
        for (topic, partition) in assignment {
            let rkt = match handles.get(topic.as_str()) {
                Some(h) => *h,
                None => {
                    let name = std::ffi::CString::new(topic.as_str())?;
                    // SAFETY: valid client and NUL-terminated name; NULL conf = defaults.
                    let h = unsafe {
                        rdsys::rd_kafka_topic_new(rk, name.as_ptr(), std::ptr::null_mut())
                    };
                    if h.is_null() {
                        bail!("rd_kafka_topic_new({topic}) failed");
                    }
                    pc.topics.push(h);
                    handles.insert(topic, h);
                    h
                }
            };
            // SAFETY: valid topic handle and queue.
            let rc = unsafe {
                rdsys::rd_kafka_consume_start_queue(
                    rkt,
                    *partition,
                    i64::from(rdsys::RD_KAFKA_OFFSET_BEGINNING),
                    pc.queue,
                )
            };
            if rc != 0 {
                bail!("consume_start {topic}/{partition} failed");
            }
            pc.started.push((rkt, *partition));
        }
        Ok(pc)
    }

    /// Hand each consumed value to `f`; returns how many were consumed (0 on timeout).
    fn poll(&self, timeout_ms: i32, mut f: impl FnMut(&[u8])) -> usize {
        let mut batch = [std::ptr::null_mut::<rdsys::rd_kafka_message_t>(); 512];
        // SAFETY: the queue is live; librdkafka fills at most batch.len() pointers.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue,
                timeout_ms,
                batch.as_mut_ptr(),
                batch.len(),
            )
        };
        let mut got = 0;
        for m in batch.iter().take(n.max(0) as usize) {
            // SAFETY: each returned message is valid until destroyed below.
            unsafe {
                let msg = &**m;
                if msg.err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let v = if msg.payload.is_null() {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(msg.payload as *const u8, msg.len)
                    };
                    f(v);
                    got += 1;
                } else if msg.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                    self.consumer
                        .context()
                        .noisy
                        .say(&format!("consume error {:?}", msg.err));
                }
                rdsys::rd_kafka_message_destroy(*m);
            }
        }
        got
    }
}

impl Drop for PartitionConsumer {
    fn drop(&mut self) {
        // SAFETY: handles created in `new` on the client that `consumer` still owns.
        unsafe {
            for (rkt, p) in &self.started {
                rdsys::rd_kafka_consume_stop(*rkt, *p);
            }
            rdsys::rd_kafka_queue_destroy(self.queue);
            for rkt in &self.topics {
                rdsys::rd_kafka_topic_destroy(*rkt);
            }
        }
    }
}

fn consumer_loop(job: ConsumerJob) -> Result<()> {
    let consumer = PartitionConsumer::new(&job.config, &job.assignment)?;
    let mut local = ConsumeStats {
        hist: Some(stats::new_histogram()),
        series: Series::new(job.bucket_ms),
        ..Default::default()
    };
    let mut timing = None;
    while !job.stop.load(Ordering::Relaxed) {
        if timing.is_none() {
            timing = *job.timing.lock().unwrap();
        }
        let mut bytes_total = 0;
        let n = consumer.poll(50, |v| {
            let now = mono_ns();
            bytes_total += v.len() as u64;
            let Some(t) = timing else { return };
            let bytes = v.len() as u64;
            local.series.add(now.saturating_sub(t.t0), bytes);
            if t.in_window(now) {
                local.window.bytes += bytes;
                local.window.records += 1;
            }
            if v.len() >= HEADER_BYTES {
                let intended = u64::from_le_bytes(v[..8].try_into().unwrap());
                if t.in_window(intended) {
                    stats::record_ns(local.hist.as_mut().unwrap(), now.saturating_sub(intended));
                }
            }
        });
        if n > 0 {
            let _ = job.first_record.compare_exchange(
                0,
                mono_ns(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        job.consumed.fetch_add(n as u64, Ordering::Relaxed);
        job.consumed_bytes.fetch_add(bytes_total, Ordering::Relaxed);
    }
    drop(consumer);
    let mut s = job.stats.lock().unwrap();
    s.hist.as_mut().unwrap().add(local.hist.as_ref().unwrap())?;
    s.series.merge(&local.series);
    s.window.bytes += local.window.bytes;
    s.window.records += local.window.records;
    Ok(())
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `sync` and drop the page cache; false when not allowed.
fn drop_page_cache() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Split `partitions` of `topics` over `n` consumers, round-robin.
pub fn assignments(topics: &[String], partitions: u32, n: u32) -> Vec<Vec<(String, i32)>> {
    let mut out = vec![Vec::new(); n as usize];
    let mut i = 0usize;
    for t in topics {
        for p in 0..partitions {
            out[i % n as usize].push((t.clone(), p as i32));
            i += 1;
        }
    }
    out
}

/// Run `w` against `bootstrap` at `rate` records/s (0 = max).
pub fn run_workload(w: &Workload, bootstrap: &str, rate: f64) -> Result<RunResult> {
    let created = mono_ns();
    create_topics(w, bootstrap)?;
    let create_topics_s = (mono_ns() - created) as f64 / 1e9;
    let topics: Vec<String> = (0..w.topics).map(|i| w.topic_name(i)).collect();
    let acked_total = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for i in 0..w.producers() {
        let ctx = ProducerCtx {
            timing: Mutex::new(None),
            stats: Mutex::new(ProduceStats {
                hist: Some(stats::new_histogram()),
                series: Series::new(BUCKET_MS),
                ..Default::default()
            }),
            noisy: Noisy::new(),
            acked_total: acked_total.clone(),
        };
        let p: Prod = producer_config(w, bootstrap)
            .create_with_context(ctx)
            .with_context(|| format!("creating producer {i}"))?;
        producers.push(Arc::new(p));
    }
    let timing_cell: Arc<Mutex<Option<Timing>>> = Arc::new(Mutex::new(None));
    let consumed = Arc::new(AtomicU64::new(0));
    let consumed_bytes = Arc::new(AtomicU64::new(0));
    let first_record = Arc::new(AtomicU64::new(0));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    // A catch-up read lasts seconds: finer buckets for its throughput over time.
    let consume_bucket_ms = if w.consumer_backlog_size_mib > 0 {
        BACKLOG_BUCKET_MS
    } else {
        BUCKET_MS
    };
    let cstats = Arc::new(Mutex::new(ConsumeStats {
        hist: Some(stats::new_histogram()),
        series: Series::new(consume_bucket_ms),
        ..Default::default()
    }));
    let start_consumers = |timing_cell: &Arc<Mutex<Option<Timing>>>| {
        let n = w.consumers();
        assignments(&topics, w.partitions_per_topic, n.max(1))
            .into_iter()
            .take(n as usize)
            .map(|assignment| {
                let job = ConsumerJob {
                    config: consumer_config(w, bootstrap),
                    bucket_ms: consume_bucket_ms,
                    assignment,
                    timing: timing_cell.clone(),
                    consumed: consumed.clone(),
                    consumed_bytes: consumed_bytes.clone(),
                    first_record: first_record.clone(),
                    stop: stop_consumers.clone(),
                    stats: cstats.clone(),
                };
                std::thread::spawn(move || consumer_loop(job))
            })
            .collect::<Vec<_>>()
    };
    let topic_of = |i: u32| topics[(i % w.topics) as usize].clone();
    let run_producers = |stop: Stop, start: u64, rate: f64| {
        std::thread::scope(|s| {
            let handles: Vec<_> = producers
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let job = ProducerJob {
                        producer: p.clone(),
                        topic: topic_of(i as u32),
                        partitions: w.partitions_per_topic as i32,
                        index: i as u32,
                        of: w.producers(),
                        rate: rate / f64::from(w.producers()),
                        stop,
                        start,
                    };
                    s.spawn(move || producer_loop(w, job))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("producer thread"))
                .fold(LoopStats::default(), |a, b| LoopStats {
                    queue_full: a.queue_full + b.queue_full,
                    unsent: a.unsent + b.unsent,
                    max_lag_ns: a.max_lag_ns.max(b.max_lag_ns),
                })
        })
    };
    // Wait up to DRAIN for every acknowledgement; returns the records still unacknowledged
    // (librdkafka purges them when the producer is dropped).
    let flush_all = || -> u64 {
        let deadline = mono_ns() + DRAIN.as_nanos() as u64;
        let mut left = 0;
        for p in &producers {
            let wait = deadline.saturating_sub(mono_ns()).max(1_000_000);
            if p.flush(Duration::from_nanos(wait)).is_err() {
                left += p.in_flight_count().max(0) as u64;
            }
        }
        if left > 0 {
            eprintln!("{left} records still unacknowledged {DRAIN:?} after the end");
        }
        left
    };

    let mut result = RunResult {
        workload: w.name.clone(),
        bootstrap: bootstrap.into(),
        message_size: w.message_size,
        partitions: w.total_partitions(),
        producers: w.producers(),
        consumers: w.consumers(),
        offered_rate: rate,
        offered_mib_s: rate * w.message_size as f64 / stats::MIB,
        warmup_s: w.warmup_seconds,
        duration_s: w.duration_seconds,
        create_topics_s,
        ..Default::default()
    };

    if w.consumer_backlog_size_mib > 0 {
        // Write the backlog as fast as the producers go, then read it from the start.
        let total = (w.consumer_backlog_size_mib << 20) / w.message_size as u64;
        let per = total.div_ceil(u64::from(w.producers()));
        let t0 = mono_ns();
        let ls = run_producers(Stop::Records(per), t0, 0.0);
        if flush_all() > 0 {
            bail!("the backlog was not fully acknowledged");
        }
        let wrote = producers
            .iter()
            .map(|p| p.context().stats.lock().unwrap().acked_bytes)
            .sum::<u64>();
        let records = acked_total.load(Ordering::Relaxed);
        let write_s = (mono_ns() - t0) as f64 / 1e9;
        result.queue_full_retries = ls.queue_full;
        let dropped = w.drop_page_cache && drop_page_cache();
        if w.drop_page_cache && !dropped {
            eprintln!("could not drop the page cache (not root?): the read may come from memory");
        }
        let cpu0 = cpu_seconds();
        let r0 = mono_ns();
        *timing_cell.lock().unwrap() = Some(Timing {
            t0: r0,
            warm_end: r0,
            end: u64::MAX,
        });
        let handles = start_consumers(&timing_cell);
        let deadline = r0 + 600_000_000_000;
        while consumed.load(Ordering::Relaxed) < records && mono_ns() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let r1 = mono_ns();
        let read_s = (r1 - r0) as f64 / 1e9;
        result.window_start_ns = r0;
        result.window_end_ns = r1;
        stop_consumers.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().expect("consumer thread")?;
        }
        let got = consumed.load(Ordering::Relaxed);
        if got < records {
            bail!("catch-up read got {got} of {records} records within 600 s");
        }
        let read_bytes = consumed_bytes.load(Ordering::Relaxed);
        result.client_cpu_percent = (cpu_seconds() - cpu0) / read_s * 100.0;
        let first = first_record.load(Ordering::Relaxed).max(r0);
        result.backlog = Some(Backlog {
            bytes: wrote,
            records,
            write_mib_s: wrote as f64 / stats::MIB / write_s,
            read_mib_s: read_bytes as f64 / stats::MIB / ((r1 - first) as f64 / 1e9).max(1e-3),
            read_seconds: read_s,
            first_record_seconds: (first - r0) as f64 / 1e9,
            page_cache_dropped: dropped,
        });
        let cs = cstats.lock().unwrap();
        result.consume = Window {
            bytes: read_bytes,
            records: got,
            seconds: read_s,
        };
        result.consume_mib_s = result.consume.mib_per_sec();
        result.consume_series = cs.series.clone();
        result.delivery_errors = producers
            .iter()
            .map(|p| p.context().stats.lock().unwrap().errors)
            .sum();
        return Ok(result);
    }

    let handles = start_consumers(&timing_cell);
    // Let consumers connect and fetch once before the clock starts.
    std::thread::sleep(Duration::from_millis(if w.consumers() > 0 {
        500
    } else {
        0
    }));
    let t0 = mono_ns() + 50_000_000;
    let timing = Timing {
        t0,
        warm_end: t0 + (w.warmup_seconds * 1e9) as u64,
        end: t0 + ((w.warmup_seconds + w.duration_seconds) * 1e9) as u64,
    };
    *timing_cell.lock().unwrap() = Some(timing);
    for p in &producers {
        *p.context().timing.lock().unwrap() = Some(timing);
    }
    let cpu_at = Arc::new(Mutex::new(None::<(f64, f64)>));
    let ls = std::thread::scope(|s| {
        // CPU of this process over the window.
        let cpu_at = cpu_at.clone();
        s.spawn(move || {
            sleep_until(timing.warm_end, Duration::from_secs(3_600));
            let a = cpu_seconds();
            sleep_until(timing.end, Duration::from_secs(3_600));
            *cpu_at.lock().unwrap() = Some((a, cpu_seconds()));
        });
        run_producers(Stop::At(timing.end), t0, rate)
    });
    result.unacked_at_end = flush_all();
    let acked = acked_total.load(Ordering::Relaxed);
    let drain_end = mono_ns() + DRAIN.as_nanos() as u64;
    while w.consumers() > 0 && consumed.load(Ordering::Relaxed) < acked && mono_ns() < drain_end {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop_consumers.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("consumer thread")?;
    }
    if w.consumers() > 0 && consumed.load(Ordering::Relaxed) < acked {
        eprintln!(
            "consumers got {} of {acked} acknowledged records by the end of the drain",
            consumed.load(Ordering::Relaxed)
        );
    }

    let mut hist = stats::new_histogram();
    let mut series = Series::new(BUCKET_MS);
    let mut window = Window::default();
    for p in &producers {
        let s = p.context().stats.lock().unwrap();
        hist.add(s.hist.as_ref().unwrap())?;
        series.merge(&s.series);
        window.bytes += s.window.bytes;
        window.records += s.window.records;
        result.delivery_errors += s.errors;
    }
    window.seconds = w.duration_seconds;
    result.produce = window;
    result.produce_mib_s = window.mib_per_sec();
    result.publish_latency = Latency::from_histogram(&hist);
    result.produce_series = series;
    let cs = cstats.lock().unwrap();
    result.consume = Window {
        seconds: w.duration_seconds,
        ..cs.window
    };
    result.consume_mib_s = result.consume.mib_per_sec();
    result.e2e_latency = Latency::from_histogram(cs.hist.as_ref().unwrap());
    result.consume_series = cs.series.clone();
    result.queue_full_retries = ls.queue_full;
    result.unsent_in_window = ls.unsent;
    result.window_start_ns = timing.warm_end;
    result.window_end_ns = timing.end;
    result.max_schedule_lag_ms = ls.max_lag_ns as f64 / 1e6;
    if let Some((a, b)) = *cpu_at.lock().unwrap() {
        result.client_cpu_percent = (b - a) / w.duration_seconds * 100.0;
    }
    Ok(result)
}

/// The rate `run` offers: `--rate`, the workload's producerRate, or its producerRateOf
/// fallback at the first fraction.
pub fn effective_rate(w: &Workload, rate: Option<f64>) -> f64 {
    rate.unwrap_or_else(|| match &w.producer_rate_of {
        Some(r) => w.rate_for(r.fallback_mib_per_sec, r.fractions[0]),
        None => w.producer_rate,
    })
}

pub fn run(args: &RunArgs) -> Result<()> {
    let w = Workload::load(&args.workload)?.for_mode(args.quick);
    let rate = effective_rate(&w, args.rate);
    eprintln!(
        "run: {} against {} at {}",
        w.name,
        args.bootstrap,
        if rate > 0.0 {
            format!("{rate:.0} records/s")
        } else {
            "max rate".into()
        }
    );
    let r = run_workload(&w, &args.bootstrap, rate)?;
    eprintln!("{}", describe(&r));
    let json = serde_json::to_string(&r)?;
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// One human line about a run.
pub fn describe(r: &RunResult) -> String {
    if let Some(b) = &r.backlog {
        return format!(
            "{}: backlog {:.0} MiB written at {:.1} MiB/s, read at {:.1} MiB/s (first record after \
             {:.2} s, all after {:.1} s)",
            r.workload,
            b.bytes as f64 / stats::MIB,
            b.write_mib_s,
            b.read_mib_s,
            b.first_record_seconds,
            b.read_seconds
        );
    }
    let l = &r.publish_latency;
    let e = &r.e2e_latency;
    format!(
        "{}: produced {:.1} MiB/s ({:.0} rec/s), consumed {:.1} MiB/s; publish p50 {:.2} p99 {:.2} \
         p99.9 {:.2} max {:.2} ms; e2e p50 {:.2} p99 {:.2} p99.9 {:.2} ms; client CPU {:.0}%{}{}",
        r.workload,
        r.produce_mib_s,
        r.produce.records_per_sec(),
        r.consume_mib_s,
        l.p50_ms,
        l.p99_ms,
        l.p999_ms,
        l.max_ms,
        e.p50_ms,
        e.p99_ms,
        e.p999_ms,
        r.client_cpu_percent,
        if r.unsent_in_window > 0 {
            format!("; {} records never sent (rate not sustained)", r.unsent_in_window)
        } else {
            String::new()
        },
        if r.delivery_errors + r.unacked_at_end > 0 {
            format!(
                "; {} delivery errors, {} unacknowledged at the end",
                r.delivery_errors, r.unacked_at_end
            )
        } else {
            String::new()
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_cover_every_partition_once() {
        let topics = vec!["a".to_string(), "b".to_string()];
        let a = assignments(&topics, 3, 4);
        assert_eq!(a.len(), 4);
        let mut all: Vec<_> = a.iter().flatten().cloned().collect();
        all.sort();
        assert_eq!(all.len(), 6);
        all.dedup();
        assert_eq!(all.len(), 6);
        assert!(a.iter().all(|c| (1..=2).contains(&c.len())));
    }

    #[test]
    fn payloads_have_the_asked_size_and_randomness() {
        let w = Workload::parse(
            "name: t\npartitionsPerTopic: 1\nmessageSize: 1040\nrandomBytesRatio: 0.5\n\
             producersPerTopic: 1\nwarmupSeconds: 0\ndurationSeconds: 1\n",
        )
        .unwrap();
        let pool = payload_pool(&w, 1);
        assert_eq!(pool.len(), 8);
        for v in &pool {
            assert_eq!(v.len(), 1040);
            // 512 random bytes after the header, zeros after them.
            assert!(v[HEADER_BYTES + 512..].iter().all(|b| *b == 0));
            assert!(
                v[HEADER_BYTES..HEADER_BYTES + 512]
                    .iter()
                    .filter(|b| **b != 0)
                    .count()
                    > 400
            );
        }
        assert_ne!(pool[0], pool[1]);
    }

    #[test]
    fn effective_rate_prefers_the_flag_then_the_workload() {
        let mut w = Workload::parse(
            "name: t\npartitionsPerTopic: 1\nmessageSize: 1024\nproducersPerTopic: 1\n\
             producerRateOf: { workload: w1, fractions: [0.5], fallbackMibPerSec: 10 }\n\
             warmupSeconds: 0\ndurationSeconds: 1\n",
        )
        .unwrap();
        assert_eq!(effective_rate(&w, Some(7.0)), 7.0);
        assert_eq!(effective_rate(&w, None), 5_120.0);
        w.producer_rate_of = None;
        w.producer_rate = 300.0;
        assert_eq!(effective_rate(&w, None), 300.0);
    }
}
