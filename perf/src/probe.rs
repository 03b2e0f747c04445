//! The limit probe: what the disk and loopback can do with nothing in the way.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use io_uring::{opcode, types, IoUring};

/// Direct I/O alignment (the physical block size of common NVMe and virtio disks).
const ALIGN_BYTES: usize = 4096;
/// One sequential I/O; below common `max_sectors_kb` limits.
const SEQ_IO_BYTES: usize = 128 << 10;
/// Sequential I/Os in flight.
const SEQ_QUEUE_DEPTH: usize = 16;
const MIB: f64 = (1 << 20) as f64;

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// Directory on the disk to measure (must support O_DIRECT: not tmpfs).
    #[arg(long, default_value = "./data")]
    dir: PathBuf,
    /// Bytes written and read by the sequential tests, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: usize,
    /// Number of 4 KiB write + fdatasync operations.
    #[arg(long, default_value_t = 2000)]
    sync_ops: usize,
    /// Bytes sent over loopback TCP, in MiB.
    #[arg(long, default_value_t = 2048)]
    tcp_mib: usize,
}

/// A zeroed, 4 KiB-aligned buffer for direct I/O.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len, ALIGN_BYTES).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocating {len} aligned bytes");
        // Incompressible-ish content so no layer can cheat on zeros.
        // SAFETY: ptr is valid for len bytes.
        let slice = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for b in slice.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        AlignedBuf { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

fn open_direct(path: &PathBuf) -> Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} with O_DIRECT (tmpfs does not support it)",
                path.display()
            )
        })
}

/// Sequential direct I/O over the whole file with `SEQ_QUEUE_DEPTH` requests in flight;
/// returns MiB/s.
fn sequential(ring: &mut IoUring, fd: i32, total: usize, write: bool) -> Result<f64> {
    let bufs: Vec<AlignedBuf> = (0..SEQ_QUEUE_DEPTH)
        .map(|_| AlignedBuf::new(SEQ_IO_BYTES))
        .collect();
    let ios = total / SEQ_IO_BYTES;
    let start = Instant::now();
    let (mut submitted, mut completed) = (0usize, 0usize);
    while completed < ios {
        while submitted < ios && submitted - completed < SEQ_QUEUE_DEPTH {
            let buf = &bufs[submitted % SEQ_QUEUE_DEPTH];
            let off = (submitted * SEQ_IO_BYTES) as u64;
            let entry = if write {
                opcode::Write::new(types::Fd(fd), buf.ptr, SEQ_IO_BYTES as u32)
                    .offset(off)
                    .build()
            } else {
                opcode::Read::new(types::Fd(fd), buf.ptr, SEQ_IO_BYTES as u32)
                    .offset(off)
                    .build()
            };
            // SAFETY: the buffer outlives the request (we wait for every completion below).
            unsafe { ring.submission().push(&entry.user_data(submitted as u64)) }
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
            submitted += 1;
        }
        ring.submit_and_wait(1)?;
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                bail!(
                    "direct {} failed: {}",
                    if write { "write" } else { "read" },
                    std::io::Error::from_raw_os_error(-cqe.result())
                );
            }
            completed += 1;
        }
    }
    Ok((ios * SEQ_IO_BYTES) as f64 / MIB / start.elapsed().as_secs_f64())
}

/// 4 KiB write followed by fdatasync, one at a time; returns (ops/s, latency histogram in µs).
fn write_fdatasync(ring: &mut IoUring, fd: i32, ops: usize) -> Result<(f64, Histogram<u64>)> {
    let buf = AlignedBuf::new(ALIGN_BYTES);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        let write = opcode::Write::new(types::Fd(fd), buf.ptr, ALIGN_BYTES as u32)
            .offset((i * ALIGN_BYTES) as u64)
            .build()
            .flags(io_uring::squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(2);
        // SAFETY: the buffer outlives both requests (we wait for both).
        unsafe {
            let mut sq = ring.submission();
            sq.push(&write)
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
            sq.push(&sync)
                .map_err(|_| anyhow::anyhow!("submission queue full"))?;
        }
        ring.submit_and_wait(2)?;
        for cqe in ring.completion() {
            if cqe.result() < 0 {
                bail!(
                    "write+fdatasync failed: {}",
                    std::io::Error::from_raw_os_error(-cqe.result())
                );
            }
        }
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    Ok((ops as f64 / start.elapsed().as_secs_f64(), hist))
}

/// One sender thread, one receiver thread, 128 KiB writes; returns MiB/s.
fn loopback_tcp(total: usize) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let receiver = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    });
    let mut s = TcpStream::connect(addr)?;
    let chunk = vec![0x5au8; 128 << 10];
    let start = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&chunk)?;
        sent += chunk.len();
    }
    drop(s);
    let got = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))??;
    if got != sent {
        bail!("loopback lost bytes: sent {sent}, received {got}");
    }
    Ok(sent as f64 / MIB / start.elapsed().as_secs_f64())
}

fn ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1000.0
}

/// The machine's limits, as measured by [`measure`].
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub dir: PathBuf,
    pub seq_write_mib_s: f64,
    pub seq_read_mib_s: f64,
    pub write_fdatasync_ops_s: f64,
    pub write_fdatasync_p50_ms: f64,
    pub write_fdatasync_p99_ms: f64,
    pub write_fdatasync_p999_ms: f64,
    pub write_fdatasync_max_ms: f64,
    pub loopback_tcp_mib_s: f64,
}

impl ProbeArgs {
    pub fn new(dir: PathBuf, size_mib: usize, sync_ops: usize, tcp_mib: usize) -> ProbeArgs {
        ProbeArgs {
            dir,
            size_mib,
            sync_ops,
            tcp_mib,
        }
    }
}

pub fn measure(args: &ProbeArgs) -> Result<Limits> {
    std::fs::create_dir_all(&args.dir)?;
    let path = args.dir.join(".spate-probe");
    let total = (args.size_mib << 20) / SEQ_IO_BYTES * SEQ_IO_BYTES;
    if total == 0 {
        bail!("--size-mib must be at least 1");
    }
    let mut ring = IoUring::new(64).context("creating an io_uring (is io_uring enabled?)")?;
    let file = open_direct(&path)?;
    let fd = file.as_raw_fd();
    eprintln!("probe: sequential O_DIRECT write of {} MiB…", total >> 20);
    let write_mib_s = sequential(&mut ring, fd, total, true)?;
    // SAFETY: fsync on a descriptor we own.
    unsafe { libc::fdatasync(fd) };
    eprintln!("probe: sequential O_DIRECT read…");
    let read_mib_s = sequential(&mut ring, fd, total, false)?;
    drop(file);
    let file = open_direct(&path)?;
    eprintln!("probe: {} × (4 KiB write + fdatasync)…", args.sync_ops);
    let (sync_ops_s, hist) = write_fdatasync(&mut ring, file.as_raw_fd(), args.sync_ops)?;
    drop(file);
    let _ = std::fs::remove_file(&path);
    eprintln!("probe: loopback TCP {} MiB…", args.tcp_mib);
    let tcp_mib_s = loopback_tcp(args.tcp_mib << 20)?;
    Ok(Limits {
        dir: args.dir.clone(),
        seq_write_mib_s: write_mib_s,
        seq_read_mib_s: read_mib_s,
        write_fdatasync_ops_s: sync_ops_s,
        write_fdatasync_p50_ms: ms(&hist, 0.5),
        write_fdatasync_p99_ms: ms(&hist, 0.99),
        write_fdatasync_p999_ms: ms(&hist, 0.999),
        write_fdatasync_max_ms: hist.max() as f64 / 1000.0,
        loopback_tcp_mib_s: tcp_mib_s,
    })
}

/// The limits as a markdown table.
pub fn table(l: &Limits) -> String {
    format!(
        "| limit | value |\n|---|---|\n\
         | O_DIRECT sequential write (128 KiB × QD{SEQ_QUEUE_DEPTH}) | {:.0} MiB/s |\n\
         | O_DIRECT sequential read (128 KiB × QD{SEQ_QUEUE_DEPTH}) | {:.0} MiB/s |\n\
         | 4 KiB write + fdatasync | {:.0} ops/s; p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms |\n\
         | loopback TCP, one stream | {:.0} MiB/s |\n",
        l.seq_write_mib_s,
        l.seq_read_mib_s,
        l.write_fdatasync_ops_s,
        l.write_fdatasync_p50_ms,
        l.write_fdatasync_p99_ms,
        l.write_fdatasync_p999_ms,
        l.write_fdatasync_max_ms,
        l.loopback_tcp_mib_s
    )
}

pub fn run(args: &ProbeArgs) -> Result<()> {
    let l = measure(args)?;
    print!("{}", table(&l));
    println!("{}", serde_json::to_string(&l)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run of every probe on the real disk (the repo's target dir: not tmpfs).
    #[test]
    fn every_probe_runs_and_reports_positive_rates() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/probe-test");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe");
        let mut ring = IoUring::new(64).unwrap();
        let file = open_direct(&path).unwrap();
        let w = sequential(&mut ring, file.as_raw_fd(), 4 << 20, true).unwrap();
        let r = sequential(&mut ring, file.as_raw_fd(), 4 << 20, false).unwrap();
        let (ops, hist) = write_fdatasync(&mut ring, file.as_raw_fd(), 20).unwrap();
        assert!(w > 0.0 && r > 0.0 && ops > 0.0);
        assert_eq!(hist.len(), 20);
        assert!(loopback_tcp(8 << 20).unwrap() > 0.0);
        std::fs::remove_file(&path).unwrap();
    }
}
