//! Direct-I/O helpers over glommio's `DmaFile`, and the workarounds for its known traps.

use std::path::{Path, PathBuf};

use glommio::io::DmaFile;
use tracing::debug;

/// Every offset and length of a direct I/O is a multiple of this (the physical block size of
/// common NVMe and virtio disks; smaller alignments make the device read-modify-write).
pub const DMA_ALIGNMENT_BYTES: usize = 4096;

/// Name of the per-data-dir sentinel file.
pub const SENTINEL_FILE_NAME: &str = ".spate-sentinel";

#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Writes the non-empty sentinel file into `data_dir` (plain std I/O: call it before the shards
/// start, never on a shard).
///
/// glommio 0.9.0 probes whether a device supports polled I/O by reading from the first
/// `DmaFile` an executor opens on it; when that file is empty the probe "succeeds", every later
/// read goes to the poll ring, and on devices without `io_poll` they fail with EOPNOTSUPP
/// (DataDog/glommio#605). Each shard therefore opens and reads this file first.
pub fn prepare_sentinel(data_dir: &Path) -> Result<PathBuf, DmaError> {
    let path = data_dir.join(SENTINEL_FILE_NAME);
    let io = |what, source| DmaError::Io {
        path: path.clone(),
        what,
        source,
    };
    let ok = std::fs::metadata(&path)
        .map(|m| m.len() >= DMA_ALIGNMENT_BYTES as u64)
        .unwrap_or(false);
    if !ok {
        std::fs::write(&path, vec![0x5a; DMA_ALIGNMENT_BYTES]).map_err(|e| io("write", e))?;
    }
    Ok(path)
}

/// The cap on one direct I/O for the device holding a data dir (see
/// [`crate::log::file::MAX_IO_BYTES`]): what [`device_max_io`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMaxIo {
    /// The cap, bounded and aligned ([`crate::log::file::clamp_io_cap`]).
    pub bytes: usize,
    /// The device's `max_sectors_kb` and the sysfs file it came from; `None` when unknown
    /// (no block device behind the path: tmpfs, overlayfs, btrfs, NFS...): then `bytes` is the
    /// default [`crate::log::file::MAX_IO_BYTES`].
    pub found: Option<(u64, PathBuf)>,
}

/// The largest I/O the block device holding `path` takes at once: its `max_sectors_kb`
/// (`/sys/dev/block/MAJ:MIN/queue/max_sectors_kb`, or the parent disk's queue for a
/// partition), bounded to 4 KiB..=1 MiB and aligned to 4 KiB; the 128 KiB default when
/// unknown (logged at debug). Plain std I/O: call it once at start, before the shards.
pub fn device_max_io(path: &Path) -> DeviceMaxIo {
    device_max_io_in(Path::new("/sys"), path)
}

fn device_max_io_in(sysfs: &Path, path: &Path) -> DeviceMaxIo {
    use crate::log::file::{clamp_io_cap, MAX_IO_BYTES};
    use std::os::unix::fs::MetadataExt;
    let found = match std::fs::metadata(path) {
        Ok(m) => {
            let dev = m.dev();
            let (major, minor) = (libc::major(dev), libc::minor(dev));
            let found = max_sectors_kb(sysfs, major, minor);
            if found.is_none() {
                debug!(path = %path.display(), device = %format!("{major}:{minor}"),
                    default = MAX_IO_BYTES,
                    "no block device queue in sysfs for the data dir: default cap on one I/O");
            }
            found
        }
        Err(e) => {
            debug!(path = %path.display(), error = %e, default = MAX_IO_BYTES,
                "cannot stat the data dir: default cap on one I/O");
            None
        }
    };
    DeviceMaxIo {
        bytes: found.as_ref().map_or(MAX_IO_BYTES, |(kb, _)| {
            clamp_io_cap(kb.saturating_mul(1024))
        }),
        found,
    }
}

/// `max_sectors_kb` of block device `major:minor` under `sysfs`, with the file read: the
/// device's own request queue, or its parent disk's when it is a partition (a partition has a
/// `partition` file and no queue). Device-mapper, md, loop and whole disks have their own.
fn max_sectors_kb(sysfs: &Path, major: u32, minor: u32) -> Option<(u64, PathBuf)> {
    let dev = sysfs.join(format!("dev/block/{major}:{minor}"));
    let queue = if dev.join("partition").exists() {
        // `..` is resolved by the kernel after the symlink: the parent disk's directory.
        dev.join("../queue/max_sectors_kb")
    } else {
        dev.join("queue/max_sectors_kb")
    };
    let kb = std::fs::read_to_string(&queue)
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    (kb > 0).then_some((kb, queue))
}

/// Opens and reads the sentinel through `DmaFile` on the calling shard, so glommio's
/// per-device probe sees a non-empty file. Call once per shard before any segment is opened.
pub async fn touch_sentinel(path: &Path) -> Result<(), DmaError> {
    let io = |what, source| DmaError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let file = DmaFile::open(path)
        .await
        .map_err(|e| io("open sentinel", e.into()))?;
    let read = file.read_at_aligned(0, DMA_ALIGNMENT_BYTES).await;
    let _ = file.close().await;
    let buf = read.map_err(|e| io("read sentinel", e.into()))?;
    debug!(path = %path.display(), bytes = buf.len(), "sentinel read");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: a whole disk `8:0` with a partition `8:1` (symlinked as the kernel does),
    /// and a device-mapper volume `253:0` with its own queue.
    fn fake_sysfs(root: &Path, disk_kb: &str, dm_kb: &str) {
        let disk = root.join("devices/pci0000:00/0000:00:04.0/block/sda");
        std::fs::create_dir_all(disk.join("queue")).unwrap();
        std::fs::write(disk.join("queue/max_sectors_kb"), disk_kb).unwrap();
        std::fs::create_dir_all(disk.join("sda1")).unwrap();
        std::fs::write(disk.join("sda1/partition"), "1\n").unwrap();
        let dm = root.join("devices/virtual/block/dm-0");
        std::fs::create_dir_all(dm.join("queue")).unwrap();
        std::fs::write(dm.join("queue/max_sectors_kb"), dm_kb).unwrap();
        let links = root.join("dev/block");
        std::fs::create_dir_all(&links).unwrap();
        symlink(
            "../../devices/pci0000:00/0000:00:04.0/block/sda",
            links.join("8:0"),
        )
        .unwrap();
        symlink(
            "../../devices/pci0000:00/0000:00:04.0/block/sda/sda1",
            links.join("8:1"),
        )
        .unwrap();
        symlink("../../devices/virtual/block/dm-0", links.join("253:0")).unwrap();
    }

    #[test]
    fn max_sectors_kb_of_disks_partitions_and_virtual_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fake_sysfs(root, "512\n", "64\n");
        let (kb, file) = max_sectors_kb(root, 8, 0).unwrap();
        assert_eq!(kb, 512);
        assert_eq!(file, root.join("dev/block/8:0/queue/max_sectors_kb"));
        // A partition: its parent disk's queue.
        let (kb, file) = max_sectors_kb(root, 8, 1).unwrap();
        assert_eq!(kb, 512);
        assert_eq!(file, root.join("dev/block/8:1/../queue/max_sectors_kb"));
        assert_eq!(max_sectors_kb(root, 253, 0).unwrap().0, 64);
        // No such device (tmpfs, overlayfs: anonymous device numbers).
        assert!(max_sectors_kb(root, 0, 42).is_none());
    }

    #[test]
    fn the_cap_is_bounded_aligned_and_defaults_when_unknown() {
        use crate::log::file::{clamp_io_cap, MAX_IO_BYTES};
        assert_eq!(clamp_io_cap(512 * 1024), 512 * 1024);
        assert_eq!(clamp_io_cap(4096 * 1024), 1 << 20);
        assert_eq!(clamp_io_cap(1024), 4096);
        assert_eq!(clamp_io_cap(130 * 1024 + 100), 128 * 1024);
        assert_eq!(clamp_io_cap(127 * 1024), 124 * 1024);
        for (kb, want) in [
            ("1280", 1 << 20),
            ("64", 64 << 10),
            ("garbage", MAX_IO_BYTES),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            fake_sysfs(tmp.path(), kb, "64");
            let got = max_sectors_kb(tmp.path(), 8, 1)
                .map_or(MAX_IO_BYTES, |(kb, _)| clamp_io_cap(kb * 1024));
            assert_eq!(got, want, "max_sectors_kb {kb}");
        }
        // A path whose device has no queue under the given sysfs root: the default.
        let tmp = tempfile::tempdir().unwrap();
        let got = device_max_io_in(tmp.path(), tmp.path());
        assert_eq!(
            got,
            DeviceMaxIo {
                bytes: MAX_IO_BYTES,
                found: None
            }
        );
        // The real one, wherever these tests run: bounded, whatever it is.
        let real = device_max_io(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(
            (4096..=1 << 20).contains(&real.bytes) && real.bytes.is_multiple_of(4096),
            "{real:?}"
        );
    }
}
