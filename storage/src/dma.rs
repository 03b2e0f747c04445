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
