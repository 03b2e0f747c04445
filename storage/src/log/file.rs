//! The file seam: what a segment needs from a file and a directory, with the glommio
//! `DmaFile` implementation. The in-memory, crash-injecting implementation is in
//! [`super::faulty`].
//!
//! Everything here is shard-local: the futures are `!Send` on purpose (glommio types are), so
//! the traits use `async fn` directly.
#![allow(async_fn_in_trait)] // shard-local by design: no `Send` bound is wanted

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use crate::dma::DMA_ALIGNMENT_BYTES;

/// The default cap on one I/O submitted to the device (larger requests are split), used when
/// the device's own limit is unknown. Requests above the device's `max_sectors_kb` have hung
/// glommio processes in D state (DataDog/glommio#633), so [`DmaDir`] takes the device's limit
/// ([`crate::dma::device_max_io`]) bounded to [`MIN_IO_CAP_BYTES`]..=[`MAX_IO_CAP_BYTES`].
/// Also the appender's default write size ([`super::LogConfig::write_chunk_bytes`]).
pub const MAX_IO_BYTES: usize = 128 * 1024;
/// The smallest cap on one I/O (one page).
pub const MIN_IO_CAP_BYTES: usize = DMA_ALIGNMENT_BYTES;
/// The largest cap on one I/O, whatever the device allows.
pub const MAX_IO_CAP_BYTES: usize = 1 << 20;

/// `bytes` as a cap on one I/O: within [`MIN_IO_CAP_BYTES`]..=[`MAX_IO_CAP_BYTES`], a multiple
/// of the DMA alignment (rounded down).
pub fn clamp_io_cap(bytes: u64) -> usize {
    let b = bytes.clamp(MIN_IO_CAP_BYTES as u64, MAX_IO_CAP_BYTES as u64);
    align_down(b) as usize
}

const ALIGN: u64 = DMA_ALIGNMENT_BYTES as u64;

pub(crate) fn align_down(v: u64) -> u64 {
    v & !(ALIGN - 1)
}
pub(crate) fn is_aligned(v: u64) -> bool {
    v & (ALIGN - 1) == 0
}
pub(crate) fn align_up(v: u64) -> u64 {
    (v + ALIGN - 1) & !(ALIGN - 1)
}

/// A buffer suitable for the file's writes (DMA memory for O_DIRECT files).
pub trait IoBuf {
    fn as_slice(&self) -> &[u8];
    fn as_mut_slice(&mut self) -> &mut [u8];
}

impl IoBuf for DmaBuffer {
    fn as_slice(&self) -> &[u8] {
        self.as_bytes()
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self.as_bytes_mut()
    }
}

impl IoBuf for Vec<u8> {
    fn as_slice(&self) -> &[u8] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [u8] {
        self
    }
}

/// What a segment needs from one file.
pub trait SegmentFile {
    type Buf: IoBuf;
    /// Writes `buf[..len]` at `pos` and hands the buffer back (its first `len` bytes intact),
    /// so a write that failed — a full disk — can be retried from memory. `pos` and `len` are
    /// multiples of [`DMA_ALIGNMENT_BYTES`]; `len <= buf.len()`. Implementations split writes
    /// larger than their directory's [`SegmentDir::max_io_bytes`].
    async fn write_at(&self, pos: u64, buf: Self::Buf, len: usize) -> (Self::Buf, io::Result<()>);
    /// Reads `len` bytes at `pos` (any alignment); shorter only at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes>;
    async fn fdatasync(&self) -> io::Result<()>;
    async fn truncate(&self, len: u64) -> io::Result<()>;
    async fn size(&self) -> io::Result<u64>;
    async fn close(self) -> io::Result<()>;
}

/// What a partition log needs from its directory.
pub trait SegmentDir: Clone {
    type Buf: IoBuf;
    type File: SegmentFile<Buf = Self::Buf>;
    /// A write buffer of `len` bytes (a multiple of the alignment); contents unspecified.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Opens `name`, creating it empty if missing; never truncates.
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// The largest single I/O its files submit (larger ones are split): writes of the
    /// appender are at most this long ([`super::PartitionLog::open`] caps its chunks).
    fn max_io_bytes(&self) -> usize {
        MAX_IO_BYTES
    }
    /// Opens `name` only if it exists (`ErrorKind::NotFound` otherwise): for lazily opened
    /// segments and metadata files, which must never be re-created by a late reader.
    async fn open_existing(&self, name: &str) -> io::Result<Self::File>;
    /// File names in the directory (any order).
    async fn list(&self) -> io::Result<Vec<String>>;
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Renames `from` to `to`, atomically replacing `to` if it exists (POSIX `rename`). Open
    /// handles keep working on the file they opened.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes creations, renames and removals durable (fsync of the directory).
    async fn sync(&self) -> io::Result<()>;
}

/// A partition directory on a real disk, files opened O_DIRECT through glommio.
///
/// Construct it with [`DmaDir::open`], which reads the data dir's sentinel first: that defuses
/// glommio 0.9.0's iopoll mis-probe (see [`crate::dma`]) and gives us a long-lived `DmaFile` to
/// allocate DMA buffers from before any segment exists.
#[derive(Clone)]
pub struct DmaDir {
    inner: Rc<DmaDirInner>,
}

struct DmaDirInner {
    path: PathBuf,
    /// The sentinel, kept open: glommio allocates DMA buffers through a file handle. Shared
    /// by [`DmaDir::sibling`]s.
    buffers: Rc<DmaFile>,
    /// Cap on one I/O (see [`MAX_IO_BYTES`]); siblings inherit it.
    max_io_bytes: usize,
}

impl DmaDir {
    /// Opens (creating if needed) the partition directory `path`. `sentinel` is the file
    /// written by [`crate::dma::prepare_sentinel`] on the same device.
    ///
    /// Start-up only: creating the directory uses glommio's blocking pool.
    pub async fn open(path: &Path, sentinel: &Path) -> io::Result<Self> {
        Self::open_capped(path, sentinel, MAX_IO_BYTES).await
    }

    /// As [`Self::open`], splitting I/Os above `max_io_bytes` (bounded, see
    /// [`clamp_io_cap`]): the device's `max_sectors_kb`, read at start with
    /// [`crate::dma::device_max_io`]. Siblings inherit the cap.
    pub async fn open_capped(
        path: &Path,
        sentinel: &Path,
        max_io_bytes: usize,
    ) -> io::Result<Self> {
        let buffers = DmaFile::open(sentinel).await.map_err(io::Error::from)?;
        // The probe read: the first DmaFile an executor reads on a device must be non-empty.
        buffers
            .read_at_aligned(0, DMA_ALIGNMENT_BYTES)
            .await
            .map_err(io::Error::from)?;
        let p = path.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || std::fs::create_dir_all(&p))
            .await?;
        Ok(Self {
            inner: Rc::new(DmaDirInner {
                path: path.to_path_buf(),
                buffers: Rc::new(buffers),
                max_io_bytes: clamp_io_cap(max_io_bytes as u64),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Another partition directory on the same device, sharing this one's sentinel handle
    /// (one file descriptor per shard instead of one per partition). Creates `path`.
    ///
    /// Start-up only: creating the directory uses glommio's blocking pool.
    pub async fn sibling(&self, path: &Path) -> io::Result<Self> {
        let p = path.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || std::fs::create_dir_all(&p))
            .await?;
        Ok(Self {
            inner: Rc::new(DmaDirInner {
                path: path.to_path_buf(),
                buffers: self.inner.buffers.clone(),
                max_io_bytes: self.inner.max_io_bytes,
            }),
        })
    }

    /// Closes the sentinel handle once the last clone is gone (otherwise glommio warns that a
    /// file was dropped while active).
    /// Opens `name` read-write for direct I/O, creating it if `create`.
    async fn open_file(&self, name: &str, create: bool) -> io::Result<DmaSegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .dma_open(self.inner.path.join(name))
            .await
            .map_err(io::Error::from)?;
        Ok(DmaSegmentFile {
            file,
            buffers: self.clone(),
        })
    }

    pub async fn close(self) -> io::Result<()> {
        match Rc::try_unwrap(self.inner).map(|inner| Rc::try_unwrap(inner.buffers)) {
            Ok(Ok(buffers)) => buffers.close().await.map_err(io::Error::from),
            _ => Ok(()),
        }
    }
}

impl SegmentDir for DmaDir {
    type Buf = DmaBuffer;
    type File = DmaSegmentFile;

    fn alloc_buf(&self, len: usize) -> DmaBuffer {
        self.inner.buffers.alloc_dma_buffer(len)
    }

    fn max_io_bytes(&self) -> usize {
        self.inner.max_io_bytes
    }

    async fn open(&self, name: &str) -> io::Result<DmaSegmentFile> {
        // Not `DmaFile::create`: that truncates (O_TRUNC).
        self.open_file(name, true).await
    }

    async fn open_existing(&self, name: &str) -> io::Result<DmaSegmentFile> {
        self.open_file(name, false).await
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        // Directory listing is a blocking syscall: run it on glommio's blocking pool.
        let path = self.inner.path.clone();
        glommio::executor()
            .spawn_blocking(move || -> io::Result<Vec<String>> {
                let mut names = Vec::new();
                for entry in std::fs::read_dir(&path)? {
                    if let Some(name) = entry?.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
                Ok(names)
            })
            .await
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.inner.path.join(name))
            .await
            .map_err(io::Error::from)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        glommio::io::rename(self.inner.path.join(from), self.inner.path.join(to))
            .await
            .map_err(io::Error::from)
    }

    async fn sync(&self) -> io::Result<()> {
        let dir = glommio::io::Directory::open(&self.inner.path)
            .await
            .map_err(io::Error::from)?;
        let r = dir.sync().await;
        let _ = dir.close().await;
        r.map_err(io::Error::from)
    }
}

/// One segment file opened O_DIRECT.
pub struct DmaSegmentFile {
    file: DmaFile,
    buffers: DmaDir,
}

impl SegmentFile for DmaSegmentFile {
    type Buf = DmaBuffer;

    async fn write_at(
        &self,
        pos: u64,
        mut buf: DmaBuffer,
        len: usize,
    ) -> (DmaBuffer, io::Result<()>) {
        assert!(
            is_aligned(pos) && is_aligned(len as u64) && len <= buf.len(),
            "unaligned DMA write: pos {pos} len {len}"
        );
        let cap = self.buffers.max_io_bytes();
        if len <= cap {
            buf.trim_to_size(len);
            // `write_rc_at` leaves us a handle on the buffer, so a failed write can be
            // retried; glommio drops its clone when the request completes.
            let shared = Rc::new(buf);
            let r = write_all(&self.file, pos, shared.clone()).await;
            let buf = Rc::try_unwrap(shared).unwrap_or_else(|shared| {
                let mut copy = self.buffers.alloc_buf(len);
                copy.as_bytes_mut()
                    .copy_from_slice(&shared.as_bytes()[..len]);
                copy
            });
            return (buf, r);
        }
        // Split: copy each piece into its own DMA buffer (rare; the appender never writes
        // more than the cap at once).
        let mut done = 0;
        while done < len {
            let n = (len - done).min(cap);
            let mut piece = self.buffers.alloc_buf(n);
            piece
                .as_bytes_mut()
                .copy_from_slice(&buf.as_bytes()[done..done + n]);
            if let Err(e) = write_all(&self.file, pos + done as u64, Rc::new(piece)).await {
                return (buf, Err(e));
            }
            done += n;
        }
        (buf, Ok(()))
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Bytes> {
        let start = align_down(pos);
        let end = align_up(pos + len as u64);
        let mut out = BytesMut::with_capacity((end - start) as usize);
        let mut at = start;
        let cap = self.buffers.max_io_bytes();
        while at < end {
            let n = ((end - at) as usize).min(cap);
            let r = self
                .file
                .read_at_aligned(at, n)
                .await
                .map_err(io::Error::from)?;
            out.extend_from_slice(&r);
            if r.len() < n {
                break; // end of file
            }
            at += n as u64;
        }
        let skip = (pos - start) as usize;
        let mut out = out.freeze();
        if out.len() <= skip {
            return Ok(Bytes::new());
        }
        let _ = out.split_to(skip);
        out.truncate(len);
        Ok(out)
    }

    async fn fdatasync(&self) -> io::Result<()> {
        self.file.fdatasync().await.map_err(io::Error::from)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(io::Error::from)
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}

async fn write_all(file: &DmaFile, pos: u64, buf: Rc<DmaBuffer>) -> io::Result<()> {
    let len = buf.len();
    let n = file.write_rc_at(buf, pos).await.map_err(io::Error::from)?;
    if n != len {
        // A short O_DIRECT write means the device ran out of space mid-request: report it
        // as a full disk (the flush is retried whole from memory).
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("short DMA write at {pos}: {n} of {len} bytes"),
        ));
    }
    Ok(())
}

/// Whether an I/O error means "no space" (ENOSPC, EDQUOT, or a short write): the operation
/// may succeed once space is freed, so the log keeps the data and retries.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Writes a small metadata file (an index, the segment checkpoint) in place through the
/// seam: one aligned write of `bytes` padded with zeros, then `fdatasync`. The format must
/// carry its own length and checksum: a torn write, or the longer tail of an older version,
/// is then detected rather than trusted. Returns whether the file was created (then the
/// directory needs a sync for its name to survive a crash).
pub(crate) async fn write_small_file<D: SegmentDir>(
    dir: &D,
    name: &str,
    bytes: &[u8],
) -> io::Result<bool> {
    let (file, created) = match dir.open_existing(name).await {
        Ok(f) => (f, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (dir.open(name).await?, true),
        Err(e) => return Err(e),
    };
    let padded = align_up(bytes.len() as u64).max(ALIGN) as usize;
    let mut written = 0;
    let mut result = Ok(());
    while written < padded {
        let n = (padded - written).min(dir.max_io_bytes());
        let mut buf = dir.alloc_buf(n);
        let s = buf.as_mut_slice();
        let have = bytes.len().saturating_sub(written).min(n);
        s[..have].copy_from_slice(&bytes[written..written + have]);
        s[have..n].fill(0);
        let (_, r) = file.write_at(written as u64, buf, n).await;
        if let Err(e) = r {
            result = Err(e);
            break;
        }
        written += n;
    }
    if result.is_ok() {
        result = file.fdatasync().await;
    }
    let closed = file.close().await;
    result.and(closed).map(|()| created)
}

/// Reads a whole small file; `None` when it does not exist.
pub(crate) async fn read_small_file<D: SegmentDir>(
    dir: &D,
    name: &str,
) -> io::Result<Option<Bytes>> {
    let file = match dir.open_existing(name).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let r = async {
        let size = file.size().await?;
        file.read_at(0, size as usize).await
    }
    .await;
    let closed = file.close().await;
    let bytes = r?;
    closed?;
    Ok(Some(bytes))
}
