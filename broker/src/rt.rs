//! Our small wrapper around glommio: executor pool, placement, and the memlock budget.
//!
//! glommio 0.9.0 is pinned; everything the broker needs from its executor setup goes through
//! here so a move to the community fork stays local.

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use tracing::{info, warn};

use crate::config::Config;

/// glommio's default per-executor I/O buffer slab.
pub const IO_MEMORY_DEFAULT_BYTES: usize = 10 << 20;
/// Below this the slab is too small to be worth registering.
pub const IO_MEMORY_MIN_BYTES: usize = 256 << 10;
/// glommio refuses to start an executor when RLIMIT_MEMLOCK is below this.
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;

/// RLIMIT_MEMLOCK's soft limit in bytes; `None` when unlimited.
pub fn memlock_limit_bytes() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(lim.rlim_cur)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (every client connection is a descriptor);
/// returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Root or CAP_IPC_LOCK in the effective set: RLIMIT_MEMLOCK does not apply.
fn is_memlock_exempt() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() == 0 } {
        return true;
    }
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Each executor registers its I/O slab in three rings against RLIMIT_MEMLOCK (root and
/// CAP_IPC_LOCK are exempt), and the rings' own queues count against it too, so the slab is
/// sized to `memlock / (4 × shards)` when limited: a quarter stays for the rings (with exactly
/// a third per ring, registration failed with ENOMEM under an 8 MiB limit).
pub fn io_memory_bytes(
    configured: Option<usize>,
    shards: usize,
    memlock: Option<u64>,
    exempt: bool,
) -> usize {
    if let Some(n) = configured {
        return n;
    }
    match memlock {
        None => IO_MEMORY_DEFAULT_BYTES,
        Some(_) if exempt => IO_MEMORY_DEFAULT_BYTES,
        Some(limit) => {
            let share = (limit / (4 * shards as u64)) as usize;
            share.clamp(IO_MEMORY_MIN_BYTES, IO_MEMORY_DEFAULT_BYTES) & !4095
        }
    }
}

/// Builds the shard pool: one executor per shard, pinned when configured.
pub fn pool(config: &Config) -> anyhow::Result<LocalExecutorPoolBuilder> {
    let memlock = memlock_limit_bytes();
    let root = is_memlock_exempt();
    if let Some(limit) = memlock {
        if limit < MEMLOCK_MIN_BYTES && !root {
            anyhow::bail!(
                "RLIMIT_MEMLOCK is {limit} bytes; glommio needs at least {MEMLOCK_MIN_BYTES}. \
                 Raise it (systemd: LimitMEMLOCK=infinity; docker: --ulimit memlock=-1)"
            );
        }
    }
    let nofile = raise_nofile_limit();
    info!(nofile, "open-file limit (bounds client connections)");
    let io_memory = io_memory_bytes(config.io_memory_bytes, config.smp, memlock, root);
    let budget = 3 * io_memory as u64 * config.smp as u64;
    match memlock {
        Some(limit) if !root && budget > limit => warn!(
            memlock_bytes = limit,
            io_memory_bytes = io_memory,
            shards = config.smp,
            "io_memory × 3 rings × shards exceeds RLIMIT_MEMLOCK: some buffers will not be \
             registered (slower I/O); set LimitMEMLOCK=infinity"
        ),
        _ => info!(
            memlock_bytes = ?memlock,
            io_memory_bytes = io_memory,
            shards = config.smp,
            root,
            "memlock budget"
        ),
    }
    let placement = if config.pin_shards {
        PoolPlacement::MaxSpread(config.smp, None)
    } else {
        PoolPlacement::Unbound(config.smp)
    };
    Ok(LocalExecutorPoolBuilder::new(placement)
        .name("spate-shard")
        .io_memory(io_memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_memory_fits_the_memlock_budget() {
        assert_eq!(io_memory_bytes(Some(1 << 20), 4, Some(1), false), 1 << 20);
        assert_eq!(
            io_memory_bytes(None, 4, None, false),
            IO_MEMORY_DEFAULT_BYTES
        );
        assert_eq!(
            io_memory_bytes(None, 4, Some(8 << 20), true),
            IO_MEMORY_DEFAULT_BYTES
        );
        let n = io_memory_bytes(None, 2, Some(8 << 20), false);
        assert!(4 * 2 * n as u64 <= 8 << 20, "{n}");
        assert_eq!(n % 4096, 0);
        assert_eq!(
            io_memory_bytes(None, 64, Some(1 << 20), false),
            IO_MEMORY_MIN_BYTES
        );
    }
}
