//! Walking batch headers through a segment: the windowed reader behind reads (from a sparse
//! index entry to the wanted offset), timestamp lookups, suffix truncation and recovery
//! (which also checks every batch's CRC-32C).

use bytes::{Bytes, BytesMut};

use super::appender::Appender;
use super::batch::{check_first, BatchError, BatchHeader, BATCH_HEADER_LEN, MAGIC_V2};
use super::file::{align_down, align_up, SegmentDir, SegmentFile};
use super::index::{LastBatch, SegmentIndex, NO_TIMESTAMP};
use super::recovery::CorruptTail;
use super::{io_err, LogError};

/// Where a cursor gets its bytes.
#[allow(async_fn_in_trait)] // shard-local by design
pub(crate) trait ByteSource {
    /// `len` bytes at `pos`, shorter only at the end of the data.
    async fn read(&self, pos: u64, len: usize) -> Result<Bytes, LogError>;
}

pub(crate) struct FileSource<'a, F> {
    pub file: &'a F,
    pub name: &'a str,
}

impl<F: SegmentFile> ByteSource for FileSource<'_, F> {
    async fn read(&self, pos: u64, len: usize) -> Result<Bytes, LogError> {
        self.file
            .read_at(pos, len)
            .await
            .map_err(io_err(self.name, "read"))
    }
}

/// A segment's bytes wherever they are: the file below the appender's memory, the
/// appender's memory above (only with no write in flight, so the two cover everything).
pub(crate) struct SegmentSource<'a, D: SegmentDir> {
    pub file: Option<&'a D::File>,
    pub appender: &'a Appender<D>,
    pub name: &'a str,
}

impl<D: SegmentDir> ByteSource for SegmentSource<'_, D> {
    async fn read(&self, pos: u64, len: usize) -> Result<Bytes, LogError> {
        let end = (pos + len as u64).min(self.appender.dirty().0);
        if pos >= end {
            return Ok(Bytes::new());
        }
        let mem = self
            .appender
            .memory_start()
            .unwrap_or(end)
            .max(pos)
            .min(end);
        let mut out = BytesMut::with_capacity((end - pos) as usize);
        if pos < mem {
            let file = self.file.ok_or_else(|| LogError::ReadMismatch {
                segment: self.name.to_string(),
                pos,
                reason: "bytes below the appender's memory but no file".into(),
            })?;
            let b = file
                .read_at(pos, (mem - pos) as usize)
                .await
                .map_err(io_err(self.name, "read"))?;
            if b.len() as u64 != mem - pos {
                return Err(LogError::ReadMismatch {
                    segment: self.name.to_string(),
                    pos,
                    reason: format!("{} of {} bytes on file", b.len(), mem - pos),
                });
            }
            out.extend_from_slice(&b);
        }
        if mem < end {
            let b = self
                .appender
                .read_memory(mem, (end - mem) as usize)
                .ok_or_else(|| LogError::ReadMismatch {
                    segment: self.name.to_string(),
                    pos: mem,
                    reason: "bytes not in the appender's memory".into(),
                })?;
            out.extend_from_slice(&b);
        }
        Ok(out.freeze())
    }
}

/// A forward reader over `[.., limit)` that keeps one window of bytes.
pub(crate) struct Cursor<'a, S> {
    src: &'a S,
    pub pos: u64,
    pub limit: u64,
    chunk: usize,
    win_pos: u64,
    win: Bytes,
}

impl<'a, S: ByteSource> Cursor<'a, S> {
    pub fn new(src: &'a S, pos: u64, limit: u64, chunk: usize) -> Self {
        Self {
            src,
            pos,
            limit,
            chunk: chunk.max(BATCH_HEADER_LEN),
            win_pos: pos,
            win: Bytes::new(),
        }
    }

    fn in_window(&self, pos: u64, n: usize) -> bool {
        self.win_pos <= pos && pos + n as u64 <= self.win_pos + self.win.len() as u64
    }

    /// Makes `[pos, pos + n)` readable (`n` capped at the limit); returns how many bytes from
    /// `pos` are available (less than asked only when the source ends early).
    pub async fn fill(&mut self, n: usize) -> Result<usize, LogError> {
        let n = (n as u64).min(self.limit.saturating_sub(self.pos)) as usize;
        if !self.in_window(self.pos, n) {
            let want = (n.max(self.chunk) as u64).min(self.limit - self.pos) as usize;
            self.win = self.src.read(self.pos, want).await?;
            self.win_pos = self.pos;
        }
        Ok(self.avail().len().min(n))
    }

    /// The window's bytes from the cursor on.
    pub fn avail(&self) -> &[u8] {
        let off = (self.pos - self.win_pos) as usize;
        &self.win[off.min(self.win.len())..]
    }

    /// `[pos, pos + len)` as one `Bytes`: a slice of the window when it holds them, else one
    /// read.
    pub async fn slice(&mut self, pos: u64, len: usize) -> Result<Bytes, LogError> {
        if self.in_window(pos, len) {
            let at = (pos - self.win_pos) as usize;
            return Ok(self.win.slice(at..at + len));
        }
        self.src.read(pos, len).await
    }

    /// The header of the batch at the cursor, checked for sanity only (magic, length within
    /// `max_batch_bytes`, the whole batch before the limit); `None` at the limit.
    pub async fn header(&mut self, max_batch_bytes: usize) -> Result<Option<BatchHeader>, String> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        let got = self
            .fill(BATCH_HEADER_LEN)
            .await
            .map_err(|e| e.to_string())?;
        let h = BatchHeader::decode(&self.avail()[..got]).map_err(|e| e.to_string())?;
        let total = h.total_len();
        if h.magic != MAGIC_V2 || h.batch_length < 49 || total > max_batch_bytes {
            return Err(format!(
                "no batch header at {} (magic {}, batch_length {})",
                self.pos, h.magic, h.batch_length
            ));
        }
        if self.pos + total as u64 > self.limit {
            return Err(format!(
                "batch at {} runs past the readable end {}",
                self.pos, self.limit
            ));
        }
        Ok(Some(h))
    }
}

fn mismatch(name: &str, pos: u64, reason: String) -> LogError {
    LogError::ReadMismatch {
        segment: name.to_string(),
        pos,
        reason,
    }
}

/// What [`read_batches`] found.
pub(crate) struct Found {
    pub bytes: Bytes,
    pub base_offset: u64,
    pub next_offset: u64,
}

/// Whole batches from the one containing `offset`, starting the walk at `(pos, base)` (an
/// index entry), up to `max_bytes` but at least one batch, never past `limit`. `None` when
/// no batch containing `offset` (or after it) starts before `limit`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_batches<S: ByteSource>(
    src: &S,
    name: &str,
    pos: u64,
    base: u64,
    limit: u64,
    offset: u64,
    max_bytes: usize,
    max_batch_bytes: usize,
    slack: usize,
) -> Result<Option<Found>, LogError> {
    let window = max_bytes.saturating_add(slack);
    let mut cur = Cursor::new(src, pos, limit, window);
    let mut expect = base;
    let first = loop {
        let h = cur
            .header(max_batch_bytes)
            .await
            .map_err(|r| mismatch(name, cur.pos, r))?;
        let Some(h) = h else { return Ok(None) };
        if h.base_offset != expect as i64 {
            return Err(mismatch(
                name,
                cur.pos,
                format!("batch has base offset {}, expected {expect}", h.base_offset),
            ));
        }
        expect = h.last_offset() as u64 + 1;
        if h.last_offset() as u64 >= offset {
            break h;
        }
        cur.pos += h.total_len() as u64;
    };
    let start = cur.pos;
    let mut total = first.total_len();
    cur.pos += total as u64;
    while total < max_bytes {
        let Ok(Some(h)) = cur.header(max_batch_bytes).await else {
            break;
        };
        if h.base_offset != expect as i64 || total + h.total_len() > max_bytes {
            break;
        }
        total += h.total_len();
        expect = h.last_offset() as u64 + 1;
        cur.pos += h.total_len() as u64;
    }
    let bytes = cur.slice(start, total).await?;
    if bytes.len() != total {
        return Err(mismatch(
            name,
            start,
            format!("{} of {total} bytes", bytes.len()),
        ));
    }
    Ok(Some(Found {
        bytes,
        base_offset: first.base_offset as u64,
        next_offset: expect,
    }))
}

/// The first batch from `(pos, base)` with a max timestamp `>= ts`, skipping batches that end
/// before `from`, looking no further than `bound` and never at a batch at or beyond offset
/// `below`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn find_timestamp<S: ByteSource>(
    src: &S,
    name: &str,
    pos: u64,
    base: u64,
    bound: u64,
    ts: i64,
    from: u64,
    below: u64,
    max_batch_bytes: usize,
) -> Result<Option<Found>, LogError> {
    let mut cur = Cursor::new(src, pos, bound, 64 * 1024);
    let mut expect = base;
    loop {
        let h = cur
            .header(max_batch_bytes)
            .await
            .map_err(|r| mismatch(name, cur.pos, r))?;
        let Some(h) = h else { return Ok(None) };
        if h.base_offset != expect as i64 {
            return Err(mismatch(
                name,
                cur.pos,
                format!("batch has base offset {}, expected {expect}", h.base_offset),
            ));
        }
        if h.base_offset as u64 >= below {
            return Ok(None);
        }
        let next = h.last_offset() as u64 + 1;
        if h.max_timestamp >= ts && next > from {
            let len = h.total_len();
            let at = cur.pos;
            let bytes = cur.slice(at, len).await?;
            return Ok(Some(Found {
                bytes,
                base_offset: expect,
                next_offset: next,
            }));
        }
        expect = next;
        cur.pos += h.total_len() as u64;
    }
}

/// Where [`walk_to`] stopped.
pub(crate) struct WalkEnd {
    pub pos: u64,
    /// Largest max timestamp of the batches walked over.
    pub max_ts: i64,
    /// The last batch walked over.
    pub last: Option<LastBatch>,
}

/// Walks from `(pos, base)` to the batch starting at `offset` (or to `limit` when `offset`
/// is the segment's end); errors if `offset` is not a batch boundary.
pub(crate) async fn walk_to<S: ByteSource>(
    src: &S,
    name: &str,
    pos: u64,
    base: u64,
    limit: u64,
    offset: u64,
    max_batch_bytes: usize,
) -> Result<Result<WalkEnd, ()>, LogError> {
    let mut cur = Cursor::new(src, pos, limit, 64 * 1024);
    let mut expect = base;
    let mut out = WalkEnd {
        pos,
        max_ts: NO_TIMESTAMP,
        last: None,
    };
    loop {
        if expect == offset {
            out.pos = cur.pos;
            return Ok(Ok(out));
        }
        if expect > offset {
            return Ok(Err(()));
        }
        let h = cur
            .header(max_batch_bytes)
            .await
            .map_err(|r| mismatch(name, cur.pos, r))?;
        let Some(h) = h else { return Ok(Err(())) };
        if h.base_offset != expect as i64 {
            return Err(mismatch(
                name,
                cur.pos,
                format!("batch has base offset {}, expected {expect}", h.base_offset),
            ));
        }
        out.max_ts = out.max_ts.max(h.max_timestamp);
        out.last = Some(LastBatch {
            base_offset: expect,
            pos: cur.pos,
            len: h.total_len() as u32,
            crc: h.crc,
        });
        expect = h.last_offset() as u64 + 1;
        cur.pos += h.total_len() as u64;
    }
}

/// What [`scan_verify`] found.
pub(crate) struct Scanned {
    pub index: SegmentIndex,
    pub batches: usize,
    /// End of the last good batch.
    pub end: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
    pub last_batch: Option<LastBatch>,
    /// The file's bytes `[align_down(end), end)`.
    pub tail: Bytes,
    pub corrupt: Option<CorruptTail>,
}

/// Where a verifying scan starts: at a batch boundary, with what is known before it.
pub(crate) struct ScanFrom {
    pub pos: u64,
    pub next_offset: u64,
    pub index: SegmentIndex,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
    pub last_batch: Option<LastBatch>,
}

/// Scans a segment file from `from` to `size`, validating every batch (bounds, magic,
/// CRC-32C, record count, offsets following on) and extending the sparse index. The first
/// bad byte ends the scan; zero padding within the last page is a clean end.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn scan_verify<F: SegmentFile>(
    file: &F,
    name: &str,
    base_offset: u64,
    from: ScanFrom,
    size: u64,
    read_bytes: usize,
    max_batch_bytes: usize,
    index_interval: u32,
) -> Result<Scanned, LogError> {
    let src = FileSource { file, name };
    let ScanFrom {
        mut pos,
        next_offset: mut next,
        mut index,
        max_timestamp: mut max_ts,
        mut first_timestamp,
        mut last_batch,
    } = from;
    let mut batches = 0usize;
    // The first window starts at the tail page, which the appender needs anyway.
    let mut cur = Cursor::new(&src, align_down(pos), size, read_bytes);
    cur.fill((pos - align_down(pos)) as usize + BATCH_HEADER_LEN)
        .await?;
    let corrupt = loop {
        if pos == size {
            break None;
        }
        cur.pos = pos;
        cur.fill(BATCH_HEADER_LEN).await?;
        let verdict = match check_first(cur.avail(), max_batch_bytes) {
            Err(BatchError::Incomplete { total, .. }) if pos + total as u64 <= size => {
                // The window ends before the batch does: read it whole.
                let got = cur.fill(total).await?;
                if got < total {
                    Err(BatchError::Incomplete { total, have: got })
                } else {
                    check_first(cur.avail(), max_batch_bytes)
                }
            }
            other => other,
        };
        match verdict {
            Ok(h) => {
                if h.base_offset != next as i64 {
                    break Some(CorruptTail::OffsetMismatch {
                        expected: next,
                        found: h.base_offset,
                    });
                }
                let len = h.total_len() as u64;
                if first_timestamp == NO_TIMESTAMP && next == base_offset {
                    first_timestamp = h.max_timestamp;
                }
                index.note_batch(
                    (next - base_offset) as u32,
                    pos as u32,
                    max_ts,
                    index_interval,
                );
                max_ts = max_ts.max(h.max_timestamp);
                last_batch = Some(LastBatch {
                    base_offset: next,
                    pos,
                    len: len as u32,
                    crc: h.crc,
                });
                batches += 1;
                next = h.last_offset() as u64 + 1;
                pos += len;
            }
            Err(e) => {
                // Zero padding of the tail page after the last batch is a clean end.
                if size <= align_up(pos) {
                    let rest = (size - pos) as usize;
                    let got = cur.fill(rest).await?;
                    if got == rest && cur.avail()[..rest].iter().all(|&b| b == 0) {
                        break None;
                    }
                }
                break Some(CorruptTail::Batch(e));
            }
        }
    };
    let tail_start = align_down(pos);
    let tail = cur.slice(tail_start, (pos - tail_start) as usize).await?;
    if tail.len() as u64 != pos - tail_start {
        return Err(mismatch(name, tail_start, "tail page: short read".into()));
    }
    Ok(Scanned {
        index,
        batches,
        end: pos,
        next_offset: next,
        max_timestamp: max_ts,
        first_timestamp,
        last_batch,
        tail,
        corrupt,
    })
}
