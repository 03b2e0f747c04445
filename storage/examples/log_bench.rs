//! Storage benchmark: the partition log on real O_DIRECT files, one glommio executor (one
//! shard).
//!
//! ```text
//! cargo run --release -p spate-storage --example log_bench -- [--dir PATH] [--seconds S]
//!     [--partitions N] [--batch-bytes B] [--small-bytes B]
//! ```
//!
//! Phases (each restart phase runs in a fresh child process of this binary, so RSS deltas and
//! start-up times are those of a real restart; the page cache stays warm):
//! 1. appender throughput: one partition, `--batch-bytes` batches, group commit by a flusher
//!    task, 16 MiB of unwritten bytes at most;
//! 2. fsynced small appends (`--small-bytes`): one stream; 100 partitions × one stream; one
//!    partition × 100 streams (group commit); latency = append → durable;
//! 3. `--partitions` (10 000) partitions on one shard, each with 3 segments (2 closed):
//!    memory per idle partition (RSS delta / N) after creating them, and after a clean restart;
//!    clean-restart time; crash-restart time (one more batch per partition after the clean
//!    restart, then the process exits without closing).
//!
//! Prints a table and a final JSON line. Use a data dir on a real disk (tmpfs has no O_DIRECT);
//! the default is `target/log-bench` of the workspace, wiped at start.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use glommio::sync::Semaphore;
use glommio::LocalExecutorBuilder;
use spate_storage::dma;
use spate_storage::log::batch::RecordBatch;
use spate_storage::log::file::DmaDir;
use spate_storage::log::{DurableWaiter, LogConfig, PartitionLog};

#[derive(Clone)]
struct Args {
    dir: PathBuf,
    seconds: f64,
    partitions: usize,
    batch_bytes: usize,
    small_bytes: usize,
    phase: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/log-bench"),
        seconds: 5.0,
        partitions: 10_000,
        batch_bytes: 16 * 1024,
        small_bytes: 100,
        phase: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--dir" => a.dir = PathBuf::from(v()),
            "--seconds" => a.seconds = v().parse().expect("--seconds"),
            "--partitions" => a.partitions = v().parse().expect("--partitions"),
            "--batch-bytes" => a.batch_bytes = v().parse().expect("--batch-bytes"),
            "--small-bytes" => a.small_bytes = v().parse().expect("--small-bytes"),
            "--phase" => a.phase = Some(v()),
            "--help" | "-h" => {
                println!("log_bench [--dir PATH] [--seconds S] [--partitions N] [--batch-bytes B] [--small-bytes B]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// A v2 batch of one record with a `value_len`-byte body, CRC-32C valid (storage does not
/// parse records).
fn make_batch(value_len: usize, ts: i64) -> RecordBatch {
    let body_len = value_len.max(8);
    let mut b = BytesMut::with_capacity(61 + body_len);
    b.put_i64(0); // base offset
    b.put_i32((49 + body_len) as i32); // batch length
    b.put_i32(0); // partition leader epoch
    b.put_i8(2); // magic
    b.put_u32(0); // crc, below
    b.put_i16(0); // attributes
    b.put_i32(0); // last offset delta
    b.put_i64(ts); // base timestamp
    b.put_i64(ts); // max timestamp
    b.put_i64(-1); // producer id
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i32(1); // record count
    b.put_bytes(0x5a, body_len);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    RecordBatch::validate(b.freeze(), 64 << 20).expect("valid batch")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .expect("rss")
        .parse()
        .expect("rss");
    pages * 4096
}

struct Part {
    log: Rc<RefCell<PartitionLog<DmaDir>>>,
    kick: Rc<Semaphore>,
    stop: Rc<Cell<bool>>,
    fsyncs: Rc<Cell<u64>>,
}

impl Part {
    fn new(log: PartitionLog<DmaDir>) -> Rc<Self> {
        let p = Rc::new(Part {
            log: Rc::new(RefCell::new(log)),
            kick: Rc::new(Semaphore::new(0)),
            stop: Rc::new(Cell::new(false)),
            fsyncs: Rc::new(Cell::new(0)),
        });
        let q = p.clone();
        glommio::spawn_local(async move { q.flusher().await }).detach();
        p
    }

    /// The broker's flusher loop: one job at a time, group commit.
    async fn flusher(&self) {
        loop {
            let job = self.log.borrow_mut().start_flush().expect("start_flush");
            let Some(job) = job else {
                if self.stop.get() {
                    return;
                }
                let _ = self.kick.acquire(1).await;
                let extra = self.kick.available();
                if extra > 0 {
                    let _ = self.kick.try_acquire(extra);
                }
                continue;
            };
            let w = job.write().await;
            let w = self.log.borrow_mut().finish_write(w).expect("write");
            let s = w.sync().await;
            self.log.borrow_mut().finish_sync(s).expect("fdatasync");
            self.fsyncs.set(self.fsyncs.get() + 1);
        }
    }

    fn append(&self, b: &RecordBatch) -> DurableWaiter {
        let mut log = self.log.borrow_mut();
        let a = log.append(b, 1).expect("append");
        let w = log.wait_durable(a.last_offset + 1);
        drop(log);
        self.kick.signal(1);
        w
    }

    async fn shutdown(self: Rc<Self>) {
        self.stop.set(true);
        self.kick.signal(1);
        while self.log.borrow().is_flushing() || self.kick.available() > 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
        let Ok(p) = Rc::try_unwrap(self) else {
            panic!("partition still shared")
        };
        let Ok(log) = Rc::try_unwrap(p.log) else {
            panic!("log still shared")
        };
        log.into_inner().close().await.expect("close");
    }
}

#[derive(Default, Clone)]
struct Lat {
    ns: Vec<u64>,
}

impl Lat {
    fn pct(&mut self, p: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        self.ns.sort_unstable();
        let i = ((self.ns.len() as f64 - 1.0) * p).round() as usize;
        self.ns[i] as f64 / 1000.0
    }
}

struct Row {
    name: String,
    value: String,
}

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 256 << 20,
        max_batch_bytes: 64 << 20,
        ..LogConfig::default()
    }
}

async fn open_part(root: &DmaDir, path: &Path, config: LogConfig) -> PartitionLog<DmaDir> {
    let dir = root.sibling(path).await.expect("partition dir");
    PartitionLog::open(dir, config).await.expect("open").0
}

/// Phase 1 and 2 (in this process).
async fn throughput_and_latency(
    args: &Args,
    root: &DmaDir,
    rows: &mut Vec<Row>,
    json: &mut Vec<String>,
) {
    let secs = Duration::from_secs_f64(args.seconds);
    // 1. Appender throughput.
    {
        let part = Part::new(open_part(root, &args.dir.join("tput"), cfg()).await);
        let b = make_batch(args.batch_bytes, now_ms());
        let mut inflight: VecDeque<(Instant, DurableWaiter)> = VecDeque::new();
        let mut lat = Lat::default();
        let start = Instant::now();
        let mut bytes = 0u64;
        let mut n = 0u64;
        while start.elapsed() < secs {
            for _ in 0..16 {
                inflight.push_back((Instant::now(), part.append(&b)));
                bytes += b.len() as u64;
                n += 1;
            }
            while part.log.borrow().unwritten_bytes() > 16 << 20 || inflight.len() > 4096 {
                let (t, w) = inflight.pop_front().expect("inflight");
                w.await.expect("durable");
                lat.ns.push(t.elapsed().as_nanos() as u64);
            }
            glommio::yield_if_needed().await;
        }
        while let Some((t, w)) = inflight.pop_front() {
            w.await.expect("durable");
            lat.ns.push(t.elapsed().as_nanos() as u64);
        }
        let el = start.elapsed().as_secs_f64();
        let mbps = bytes as f64 / el / 1e6;
        let fsyncs = part.fsyncs.get();
        part.shutdown().await;
        rows.push(Row {
            name: format!("appender throughput ({} B batches, fdatasync'd)", args.batch_bytes),
            value: format!(
                "{mbps:.1} MB/s, {:.0} batches/s, {fsyncs} flushes; durable p50 {:.0} µs p99 {:.0} µs p999 {:.0} µs",
                n as f64 / el,
                lat.pct(0.5),
                lat.pct(0.99),
                lat.pct(0.999)
            ),
        });
        json.push(format!(
            "\"throughput_mb_s\":{mbps:.1},\"throughput_batches_s\":{:.0},\"throughput_durable_p50_us\":{:.0},\"throughput_durable_p99_us\":{:.0}",
            n as f64 / el,
            lat.pct(0.5),
            lat.pct(0.99)
        ));
    }
    // 2. Fsynced small appends.
    for (label, key, parts, streams) in [
        ("1 partition × 1 stream", "small_1x1", 1usize, 1usize),
        ("100 partitions × 1 stream", "small_100x1", 100, 1),
        (
            "1 partition × 100 streams (group commit)",
            "small_1x100",
            1,
            100,
        ),
    ] {
        let mut ps = Vec::new();
        for i in 0..parts {
            let path = args.dir.join(format!("{key}-{i}"));
            ps.push(Part::new(open_part(root, &path, cfg()).await));
        }
        let b = Rc::new(make_batch(args.small_bytes, now_ms()));
        let start = Instant::now();
        let lats: Rc<RefCell<Lat>> = Rc::default();
        let mut tasks = Vec::new();
        for p in &ps {
            for _ in 0..streams {
                let (p, b, lats) = (p.clone(), b.clone(), lats.clone());
                tasks.push(glommio::spawn_local(async move {
                    let mut n = 0u64;
                    while start.elapsed() < secs {
                        let t = Instant::now();
                        p.append(&b).await.expect("durable");
                        lats.borrow_mut().ns.push(t.elapsed().as_nanos() as u64);
                        n += 1;
                    }
                    n
                }));
            }
        }
        let mut n = 0;
        for t in tasks {
            n += t.await;
        }
        let el = start.elapsed().as_secs_f64();
        let fsyncs: u64 = ps.iter().map(|p| p.fsyncs.get()).sum();
        for p in ps {
            p.shutdown().await;
        }
        let mut l = lats.borrow().clone();
        let (p50, p99, p999) = (l.pct(0.5), l.pct(0.99), l.pct(0.999));
        rows.push(Row {
            name: format!("fsynced {} B appends, {label}", args.small_bytes),
            value: format!(
                "{:.0} appends/s ({:.1} appends per fdatasync); p50 {p50:.0} µs p99 {p99:.0} µs p999 {p999:.0} µs",
                n as f64 / el,
                n as f64 / fsyncs.max(1) as f64
            ),
        });
        json.push(format!(
            "\"{key}_appends_s\":{:.0},\"{key}_p50_us\":{p50:.0},\"{key}_p99_us\":{p99:.0},\"{key}_p999_us\":{p999:.0}",
            n as f64 / el
        ));
    }
}

fn many_cfg() -> LogConfig {
    // Three ~1 KiB batches per segment: 9 batches make 2 closed segments and an active one.
    LogConfig {
        segment_bytes: 4096,
        write_chunk_bytes: 64 * 1024,
        ..LogConfig::default()
    }
}

/// Runs `f(0..n)` on 64 tasks (their I/O overlaps in io_uring); the results in order.
async fn bounded<T: 'static, F, Fut>(n: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let slots: Rc<RefCell<Vec<Option<T>>>> = Rc::new(RefCell::new((0..n).map(|_| None).collect()));
    let next = Rc::new(Cell::new(0usize));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (slots, next, f) = (slots.clone(), next.clone(), f.clone());
            glommio::spawn_local(async move {
                loop {
                    let i = next.get();
                    if i >= n {
                        return;
                    }
                    next.set(i + 1);
                    let t = f(i).await;
                    slots.borrow_mut()[i] = Some(t);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }
    let slots = Rc::try_unwrap(slots).ok().expect("tasks done").into_inner();
    slots.into_iter().map(|s| s.expect("done")).collect()
}

fn part_path(args: &Args, i: usize) -> PathBuf {
    args.dir.join("many").join(format!("p{i:05}"))
}

/// Child phases over `--partitions` partitions; print one `RESULT k=v ...` line.
async fn many(args: Args, root: DmaDir, phase: &str) {
    let n = args.partitions;
    let b = make_batch(1000, now_ms());
    let rss0 = rss_bytes();
    let start = Instant::now();
    let mut logs = Vec::with_capacity(n);
    let mut trusted = 0usize;
    let mut scanned = 0usize;
    match phase {
        "setup" => {
            // Create with bounded concurrency (the flushes overlap in io_uring).
            let (root, b, args) = (root.clone(), b.clone(), args.clone());
            logs = bounded(n, move |i| {
                let (root, b, args) = (root.clone(), b.clone(), args.clone());
                async move {
                    let mut log = open_part(&root, &part_path(&args, i), many_cfg()).await;
                    for _ in 0..9 {
                        log.append(&b, 1).expect("append");
                    }
                    log.flush().await.expect("flush");
                    log
                }
            })
            .await;
        }
        "open" | "crash" => {
            // Open 64 at a time, as the broker does: their I/O overlaps in io_uring.
            let (root, args) = (root.clone(), args.clone());
            let opened = bounded(n, move |i| {
                let (root, args) = (root.clone(), args.clone());
                async move {
                    let dir = root.sibling(&part_path(&args, i)).await.expect("dir");
                    PartitionLog::open(dir, many_cfg()).await.expect("open")
                }
            })
            .await;
            for (log, report) in opened {
                trusted += report.trusted_segments;
                scanned += report.batches;
                logs.push(log);
            }
        }
        other => panic!("unknown phase {other}"),
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rss = rss_bytes().saturating_sub(rss0);
    let accounted: usize = logs.iter().map(|l| l.memory_bytes()).sum();
    println!(
        "RESULT phase={phase} partitions={n} seconds={elapsed:.3} rss_per_partition={} accounted_per_partition={} trusted_segments={trusted} scanned_batches={scanned}",
        rss / n as u64,
        accounted / n
    );
    if phase == "crash" {
        // One more durable batch per partition, then exit without closing anything: the
        // segment checkpoint and prefix indexes still describe the old end.
        for log in &mut logs {
            log.append(&b, 1).expect("append");
            log.flush().await.expect("flush");
        }
        std::process::exit(0);
    }
    let start = Instant::now();
    for log in logs {
        log.close().await.expect("close");
    }
    println!(
        "RESULT phase={phase}-close seconds={:.3}",
        start.elapsed().as_secs_f64()
    );
}

fn child(args: &Args, phase: &str) -> Vec<(String, String)> {
    let exe = std::env::current_exe().expect("exe");
    let out = std::process::Command::new(exe)
        .args([
            "--phase",
            phase,
            "--dir",
            args.dir.to_str().expect("utf-8 dir"),
            "--partitions",
            &args.partitions.to_string(),
        ])
        .output()
        .expect("run child");
    if !out.status.success() {
        panic!(
            "child {phase} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .flat_map(|l| {
            let phase = l
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("phase="))
                .unwrap_or("?")
                .to_string();
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(move |(k, v)| (format!("{phase}.{k}"), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn get<'a>(kv: &'a [(String, String)], k: &str) -> &'a str {
    kv.iter()
        .find(|(key, _)| key == k)
        .map_or("?", |(_, v)| v.as_str())
}

fn run_executor<F: std::future::Future<Output = ()>>(args: &Args, f: impl FnOnce(DmaDir) -> F) {
    let sentinel = dma::prepare_sentinel(&args.dir).expect("sentinel");
    let root = args.dir.clone();
    LocalExecutorBuilder::default()
        .name("log-bench")
        .make()
        .expect("executor")
        .run(async move {
            let dir = DmaDir::open(&root.join("root"), &sentinel)
                .await
                .expect("data dir");
            f(dir.clone()).await;
            dir.close().await.expect("close dir");
        });
}

fn main() {
    let args = parse_args();
    if let Some(phase) = args.phase.clone() {
        let a = args.clone();
        run_executor(
            &args,
            move |root| async move { many(a, root, &phase).await },
        );
        return;
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("bench dir");
    println!("data dir: {} (wiped)", args.dir.display());
    let rows: Rc<RefCell<Vec<Row>>> = Rc::default();
    let json: Rc<RefCell<Vec<String>>> = Rc::default();
    {
        let (a, rows, json) = (args.clone(), Rc::clone(&rows), Rc::clone(&json));
        run_executor(&args, move |root| async move {
            let (mut r, mut j) = (Vec::new(), Vec::new());
            throughput_and_latency(&a, &root, &mut r, &mut j).await;
            rows.borrow_mut().extend(r);
            json.borrow_mut().extend(j);
        });
    }
    let n = args.partitions;
    let setup = child(&args, "setup");
    let clean = child(&args, "open");
    let crash_prep = child(&args, "crash");
    let crash = child(&args, "open");
    let mut rows = rows.borrow_mut();
    rows.push(Row {
        name: format!("{n} partitions: create (9 batches, 3 segments each)"),
        value: format!(
            "{} s; memory per idle partition {} B RSS ({} B accounted by the logs)",
            get(&setup, "setup.seconds"),
            get(&setup, "setup.rss_per_partition"),
            get(&setup, "setup.accounted_per_partition")
        ),
    });
    rows.push(Row {
        name: format!("{n} partitions: clean restart"),
        value: format!(
            "{} s; {} closed segments trusted, {} batches scanned; memory per idle partition {} B RSS ({} B accounted)",
            get(&clean, "open.seconds"),
            get(&clean, "open.trusted_segments"),
            get(&clean, "open.scanned_batches"),
            get(&clean, "open.rss_per_partition"),
            get(&clean, "open.accounted_per_partition")
        ),
    });
    rows.push(Row {
        name: format!("{n} partitions: crash restart (1 batch per partition after the checkpoint)"),
        value: format!(
            "{} s; {} closed segments trusted, {} batches scanned",
            get(&crash, "open.seconds"),
            get(&crash, "open.trusted_segments"),
            get(&crash, "open.scanned_batches"),
        ),
    });
    rows.push(Row {
        name: format!("{n} partitions: clean shutdown (close)"),
        value: format!("{} s", get(&clean, "open-close.seconds")),
    });
    let _ = crash_prep;
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    println!();
    for r in rows.iter() {
        println!("{:<w$}  {}", r.name, r.value);
    }
    let mut j = json.borrow().clone();
    j.push(format!(
        "\"partitions\":{n},\"idle_partition_rss_bytes\":{},\"idle_partition_rss_bytes_after_restart\":{},\"clean_restart_s\":{},\"crash_restart_s\":{},\"crash_restart_scanned_batches\":{}",
        get(&setup, "setup.rss_per_partition"),
        get(&clean, "open.rss_per_partition"),
        get(&clean, "open.seconds"),
        get(&crash, "open.seconds"),
        get(&crash, "open.scanned_batches"),
    ));
    println!("{{{}}}", j.join(","));
}
