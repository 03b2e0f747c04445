//! `spate tune check`: what this machine's settings mean for spated (thread-per-core,
//! O_DIRECT segments, io_uring through glommio). It only reads; it changes nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use io_uring::{opcode, IoUring, Probe};
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::TuneCmd;
use crate::output::{print_json, Outcome, Table};

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK (broker::rt::MEMLOCK_MIN_BYTES).
const MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// What Seastar-style tuners set fs.aio-max-nr to.
const AIO_MAX_NR_MIN: u64 = 1 << 20;
/// statfs f_type of tmpfs (no O_DIRECT).
const TMPFS_MAGIC: i64 = 0x0102_1994;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

struct Check {
    name: &'static str,
    current: String,
    recommended: String,
    status: Status,
}

fn check(name: &'static str, current: String, recommended: &str, status: Status) -> Check {
    Check {
        name,
        current,
        recommended: recommended.to_string(),
        status,
    }
}

pub fn run(ctx: &Ctx, cmd: TuneCmd) -> Result<Outcome> {
    let TuneCmd::Check { data_dir } = cmd;
    let checks = vec![
        memlock(),
        aio_max_nr(),
        io_uring_check(),
        filesystem(&data_dir),
        scheduler(&data_dir),
        governor(),
    ];
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    if ctx.json() {
        let arr: Vec<Value> = checks
            .iter()
            .map(|c| {
                json!({
                    "check": c.name,
                    "current": c.current,
                    "recommended": c.recommended,
                    "status": c.status.as_str().to_lowercase(),
                })
            })
            .collect();
        print_json(&json!({"data_dir": data_dir, "checks": arr}));
    } else {
        let mut t = Table::new(&["CHECK", "CURRENT", "RECOMMENDED", "STATUS"]);
        for c in &checks {
            t.row([
                c.name.to_string(),
                c.current.clone(),
                c.recommended.clone(),
                c.status.as_str().to_string(),
            ]);
        }
        t.print();
    }
    Ok(Outcome::from_ok(!failed))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn memlock() -> Check {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let rec = "unlimited (systemd LimitMEMLOCK=infinity)";
    if rc != 0 {
        return check("memlock limit", "unknown".into(), rec, Status::Skip);
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        return check("memlock limit", "unlimited".into(), rec, Status::Ok);
    }
    let cur = human_bytes(lim.rlim_cur);
    if is_root() {
        // root (CAP_IPC_LOCK) is exempt from the limit.
        return check(
            "memlock limit",
            format!("{cur} (root: exempt)"),
            rec,
            Status::Ok,
        );
    }
    if lim.rlim_cur < MEMLOCK_MIN_BYTES {
        return check(
            "memlock limit",
            format!(
                "{cur} (spated will not start below {})",
                human_bytes(MEMLOCK_MIN_BYTES)
            ),
            rec,
            Status::Fail,
        );
    }
    check(
        "memlock limit",
        format!("{cur} (fewer registered I/O buffers)"),
        rec,
        Status::Warn,
    )
}

fn aio_max_nr() -> Check {
    let rec = format!(">= {AIO_MAX_NR_MIN}");
    match read_trimmed("/proc/sys/fs/aio-max-nr").and_then(|s| s.parse::<u64>().ok()) {
        None => check("fs.aio-max-nr", "unreadable".into(), &rec, Status::Skip),
        Some(n) if n >= AIO_MAX_NR_MIN => check("fs.aio-max-nr", n.to_string(), &rec, Status::Ok),
        Some(n) => check(
            "fs.aio-max-nr",
            format!("{n} (sysctl -w fs.aio-max-nr={AIO_MAX_NR_MIN})"),
            &rec,
            Status::Warn,
        ),
    }
}

/// io_uring must work: glommio runs every shard's I/O through it.
fn io_uring_check() -> Check {
    let rec = "available, with the opcodes glommio uses";
    let disabled = read_trimmed("/proc/sys/kernel/io_uring_disabled");
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            let why = match (e.raw_os_error(), disabled.as_deref()) {
                (Some(libc::ENOSYS), _) => "not in this kernel (ENOSYS)".to_string(),
                (Some(libc::EPERM), Some(d)) if d != "0" => {
                    format!("disabled (kernel.io_uring_disabled={d})")
                }
                _ => format!("unavailable: {e}"),
            };
            return check("io_uring", why, rec, Status::Fail);
        }
    };
    let mut probe = Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        // Kernels before 5.6 cannot be probed (and are too old for glommio anyway).
        return check(
            "io_uring",
            "works; cannot probe opcodes (kernel < 5.6?)".into(),
            rec,
            Status::Warn,
        );
    }
    let needed: [(&str, u8); 10] = [
        ("read", opcode::Read::CODE),
        ("write", opcode::Write::CODE),
        ("read_fixed", opcode::ReadFixed::CODE),
        ("write_fixed", opcode::WriteFixed::CODE),
        ("fsync", opcode::Fsync::CODE),
        ("fallocate", opcode::Fallocate::CODE),
        ("openat", opcode::OpenAt::CODE),
        ("close", opcode::Close::CODE),
        ("statx", opcode::Statx::CODE),
        ("poll_add", opcode::PollAdd::CODE),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(_, code)| !probe.is_supported(*code))
        .map(|(name, _)| *name)
        .collect();
    let kernel = kernel_release().unwrap_or_else(|| "?".into());
    if missing.is_empty() {
        check(
            "io_uring",
            format!("available (kernel {kernel})"),
            rec,
            Status::Ok,
        )
    } else {
        check(
            "io_uring",
            format!("kernel {kernel} lacks {}", missing.join(", ")),
            rec,
            Status::Fail,
        )
    }
}

/// The data dir, or its nearest existing ancestor (before spated created it).
fn existing(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut p = abs.as_path();
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return PathBuf::from("/"),
        }
    }
}

fn filesystem(data_dir: &Path) -> Check {
    let dir = existing(data_dir);
    let rec = "xfs or ext4 (O_DIRECT)";
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return check(
            "data dir filesystem",
            "unreadable path".into(),
            rec,
            Status::Skip,
        );
    };
    // SAFETY: statfs writes into the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return check(
            "data dir filesystem",
            format!("statfs {} failed", dir.display()),
            rec,
            Status::Skip,
        );
    }
    let kind = st.f_type as i64;
    let name = match kind {
        0x5846_5342 => "xfs",
        0xef53 => "ext4",
        0x9123_683e => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794c_7630 => "overlayfs",
        0x2fc1_2fc1 => "zfs",
        _ => "other",
    };
    let current = format!("{name} ({})", dir.display());
    match kind {
        TMPFS_MAGIC => check(
            "data dir filesystem",
            format!("{current}: no O_DIRECT, spated cannot run here"),
            rec,
            Status::Fail,
        ),
        0x5846_5342 | 0xef53 => check("data dir filesystem", current, rec, Status::Ok),
        _ => check("data dir filesystem", current, rec, Status::Warn),
    }
}

/// The block device holding `data_dir` (the whole disk, not the partition), as its sysfs dir.
fn disk_of(data_dir: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(existing(data_dir)).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    if sys.join("partition").exists() {
        sys.parent().map(Path::to_path_buf)
    } else {
        Some(sys)
    }
}

/// The scheduler in brackets: `[none] mq-deadline` → `none`.
fn active_scheduler(line: &str) -> Option<&str> {
    let start = line.find('[')?;
    let end = line[start..].find(']')? + start;
    Some(&line[start + 1..end])
}

fn scheduler(data_dir: &Path) -> Check {
    let rec = "none (or noop)";
    let Some(disk) = disk_of(data_dir) else {
        return check(
            "I/O scheduler",
            "no block device behind the data dir (overlay/tmpfs/network?)".into(),
            rec,
            Status::Skip,
        );
    };
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(line) = read_trimmed(disk.join("queue/scheduler")) else {
        return check(
            "I/O scheduler",
            format!("{name}: unreadable"),
            rec,
            Status::Skip,
        );
    };
    match active_scheduler(&line) {
        Some(s @ ("none" | "noop")) => {
            check("I/O scheduler", format!("{name}: {s}"), rec, Status::Ok)
        }
        Some(s) => check(
            "I/O scheduler",
            format!("{name}: {s} (echo none > /sys/block/{name}/queue/scheduler)"),
            rec,
            Status::Warn,
        ),
        // A single scheduler is listed without brackets ("none").
        None if line == "none" => check("I/O scheduler", format!("{name}: none"), rec, Status::Ok),
        None => check(
            "I/O scheduler",
            format!("{name}: {line}"),
            rec,
            Status::Warn,
        ),
    }
}

fn governor() -> Check {
    let rec = "performance";
    let mut governors = std::collections::BTreeMap::<String, usize>::new();
    let Ok(cpus) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return check("CPU governor", "unreadable".into(), rec, Status::Skip);
    };
    for e in cpus.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("cpu")
            || !name[3..].chars().all(|c| c.is_ascii_digit())
            || name.len() == 3
        {
            continue;
        }
        if let Some(g) = read_trimmed(e.path().join("cpufreq/scaling_governor")) {
            *governors.entry(g).or_default() += 1;
        }
    }
    if governors.is_empty() {
        return check(
            "CPU governor",
            "no cpufreq (a VM, or fixed frequency)".into(),
            rec,
            Status::Skip,
        );
    }
    let current = governors
        .iter()
        .map(|(g, n)| format!("{g} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let status = if governors.keys().all(|g| g == "performance") {
        Status::Ok
    } else {
        Status::Warn
    };
    check("CPU governor", current, rec, status)
}

fn read_trimmed<P: AsRef<Path>>(p: P) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn kernel_release() -> Option<String> {
    read_trimmed("/proc/sys/kernel/osrelease")
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_active_scheduler_is_the_bracketed_one() {
        assert_eq!(active_scheduler("[none] mq-deadline kyber"), Some("none"));
        assert_eq!(
            active_scheduler("none [mq-deadline] bfq"),
            Some("mq-deadline")
        );
        assert_eq!(active_scheduler("none"), None);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(human_bytes(MEMLOCK_MIN_BYTES), "512.0 KiB");
    }

    #[test]
    fn every_check_runs_here() {
        // Whatever this machine is, each check must produce a row without panicking.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        for c in [
            memlock(),
            aio_max_nr(),
            io_uring_check(),
            filesystem(&dir),
            scheduler(&dir),
            governor(),
        ] {
            assert!(!c.current.is_empty(), "{}", c.name);
        }
        // A missing data dir is checked through its nearest existing ancestor.
        assert!(existing(&dir.join("no/such/dir")).exists());
    }
}
