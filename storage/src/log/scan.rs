//! Walking batch headers through a segment: the windowed reader behind reads (from a sparse
//! index entry to the wanted offset), timestamp lookups, suffix truncation and recovery.
//!
//! Every batch handed out is verified first (bounds, magic, CRC-32C, record count, offsets
//! following on): reads cut before the first damaged batch and fail when it is the first one
//! ([`super::corrupt`]); recovery checks every batch it scans, steps over an isolated damaged
//! batch in the middle of the data and cuts a torn end ([`scan_verify`]). Batches only walked
//! over (before the wanted offset) need sane headers, not a CRC.

use bytes::{Bytes, BytesMut};

use super::appender::Appender;
use super::batch::{
    check_first, BatchError, BatchHeader, BATCH_HEADER_LEN, MAGIC_V2, MIN_BATCH_LENGTH,
};
use super::corrupt::{corrupt, CorruptBatch};
use super::file::{align_down, align_up, SegmentDir, SegmentFile};
use super::index::{LastBatch, SegmentIndex, NO_TIMESTAMP};
use super::recovery::CorruptTail;
use super::{io_err, BatchAt, LogError};

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
    pub(crate) async fn checked_header(
        &mut self,
        max_batch_bytes: usize,
    ) -> Result<Option<BatchHeader>, HeaderError> {
        if self.pos >= self.limit {
            return Ok(None);
        }
        let got = self.fill(BATCH_HEADER_LEN).await.map_err(HeaderError::Io)?;
        let h = BatchHeader::decode(&self.avail()[..got])
            .map_err(|e| HeaderError::Bad(format!("at {}: {e}", self.pos)))?;
        let total = h.total_len();
        if h.magic != MAGIC_V2
            || h.batch_length < MIN_BATCH_LENGTH as i32
            || total > max_batch_bytes
        {
            return Err(HeaderError::Bad(format!(
                "no batch header at {} (magic {}, batch_length {})",
                self.pos, h.magic, h.batch_length
            )));
        }
        if self.pos + total as u64 > self.limit {
            return Err(HeaderError::Bad(format!(
                "batch at {} runs past the readable end {}",
                self.pos, self.limit
            )));
        }
        Ok(Some(h))
    }
}

/// Why [`Cursor::checked_header`] found no header.
pub(crate) enum HeaderError {
    /// The read failed.
    Io(LogError),
    /// The bytes are not a sane batch header (damaged; `limit` always lies on a batch
    /// boundary, so a whole header is always there).
    Bad(String),
}

/// Verifies the batch `h` at `pos` (read through the cursor's window): `Err(why)` if damaged.
async fn verify_at<S: ByteSource>(
    cur: &mut Cursor<'_, S>,
    pos: u64,
    h: &BatchHeader,
    max_batch_bytes: usize,
) -> Result<Result<(), String>, LogError> {
    let b = cur.slice(pos, h.total_len()).await?;
    Ok(match check_first(&b, max_batch_bytes) {
        Ok(got) if got.base_offset == h.base_offset => Ok(()),
        Ok(got) => Err(format!("base offset {} changed", got.base_offset)),
        Err(e) => Err(e.to_string()),
    })
}

// Offsets always follow on, batch after batch: compaction covers the offsets of the batches
// it removes with an empty filler batch (`compact`), so any jump is damage — a base offset
// lies outside the CRC, and a flipped one must never pass as a gap.

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
    /// Damaged batches met on the way: the one the read was cut before, one walked over.
    pub damaged: Vec<CorruptBatch>,
}

/// Whole batches from the one containing `offset`, starting the walk at `(pos, base)` (an
/// index entry), up to `max_bytes` but at least one batch, never past `limit`. `None` when
/// no batch containing `offset` (or after it) starts before `limit`.
///
/// Every batch returned is verified (bounds, magic, CRC-32C, record count, offsets following
/// on); the result is cut before the first damaged one, and a damaged first batch — or a
/// header that cannot be walked over before it — fails the read with [`LogError::Corrupt`].
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
    let mut damaged = Vec::new();
    // The batch walked over last, to explain a jump in the offsets.
    let mut prev: Option<(u64, BatchHeader)> = None;
    let first = loop {
        let at = cur.pos;
        let h = match cur.checked_header(max_batch_bytes).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(HeaderError::Io(e)) => return Err(e),
            Err(HeaderError::Bad(why)) => return Err(corrupt(name, at, expect, why).into()),
        };
        if h.base_offset != expect as i64 {
            // The batch walked over may be damaged in its offset count (under its CRC, not
            // checked while walking): then its offsets are those up to this batch's base,
            // and `offset` must not be one of them. Otherwise this batch is damaged.
            let explained = match prev {
                Some((ppos, ph)) if h.base_offset > ph.base_offset => {
                    verify_at(&mut cur, ppos, &ph, max_batch_bytes)
                        .await?
                        .err()
                        .map(|why| corrupt(name, ppos, ph.base_offset as u64, why))
                }
                _ => None,
            };
            match explained {
                Some(c) if h.base_offset as u64 <= offset => damaged.push(c),
                Some(c) => return Err(c.into()),
                None => {
                    let why = format!("batch has base offset {}, expected {expect}", h.base_offset);
                    return Err(corrupt(name, at, expect, why).into());
                }
            }
        }
        if h.next_offset() as u64 > offset {
            if (h.base_offset as u64) < offset {
                // `offset` lies inside the batch by its offset count, which its CRC covers:
                // check it now, and if it lies, whether the next batch holds `offset`.
                if let Err(why) = verify_at(&mut cur, at, &h, max_batch_bytes).await? {
                    let c = corrupt(name, at, h.base_offset as u64, why);
                    cur.pos = at + h.total_len() as u64;
                    match cur.checked_header(max_batch_bytes).await {
                        Ok(Some(n))
                            if n.base_offset > h.base_offset && n.base_offset as u64 <= offset =>
                        {
                            damaged.push(c);
                            expect = n.base_offset as u64;
                            prev = None;
                            continue;
                        }
                        _ => return Err(c.into()),
                    }
                }
            }
            break h;
        }
        expect = h.next_offset() as u64;
        prev = Some((at, h));
        cur.pos += h.total_len() as u64;
    };
    let g = gather(&mut cur, name, first, max_bytes, max_batch_bytes).await?;
    damaged.extend(g.cut);
    Ok(Some(Found {
        bytes: g.bytes,
        base_offset: first.base_offset as u64,
        next_offset: g.next_offset,
        damaged,
    }))
}

/// What [`gather`] took.
struct Gathered {
    /// The verified batches from the first one on.
    bytes: Bytes,
    /// The offset after them.
    next_offset: u64,
    /// The last batch taken.
    last: BatchHeader,
    /// The damaged batch the read was cut before.
    cut: Option<CorruptBatch>,
}

/// Takes the batch `first` (its header at the cursor) and the batches following on, up to
/// `max_bytes` (but at least `first`), then verifies every batch taken (bounds, magic,
/// CRC-32C, record count, offsets following on): the result is cut before the first damaged
/// one, and a damaged `first` fails with [`LogError::Corrupt`]. The tail of both reads, by
/// offset ([`read_batches`]) and by place ([`read_batches_at`]).
async fn gather<S: ByteSource>(
    cur: &mut Cursor<'_, S>,
    name: &str,
    first: BatchHeader,
    max_bytes: usize,
    max_batch_bytes: usize,
) -> Result<Gathered, LogError> {
    let mut expect = first.next_offset() as u64;
    let start = cur.pos;
    let mut total = first.total_len();
    cur.pos += total as u64;
    let mut cut = None;
    while total < max_bytes {
        let at = cur.pos;
        let h = match cur.checked_header(max_batch_bytes).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(HeaderError::Io(_)) => break,
            Err(HeaderError::Bad(why)) => {
                cut = Some(corrupt(name, at, expect, why));
                break;
            }
        };
        if h.base_offset != expect as i64 {
            // (Or the batch before is damaged in its offset count: the check below finds that
            // one first.)
            let why = format!("batch has base offset {}, expected {expect}", h.base_offset);
            cut = Some(corrupt(name, at, expect, why));
            break;
        }
        if total + h.total_len() > max_bytes {
            break;
        }
        total += h.total_len();
        expect = h.next_offset() as u64;
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
    // Verify what goes out.
    let mut end = 0;
    let mut next = first.base_offset as u64;
    let mut last = first;
    while end < bytes.len() {
        let why = match check_first(&bytes[end..], max_batch_bytes) {
            Ok(h) if h.base_offset == next as i64 => {
                end += h.total_len();
                next = h.next_offset() as u64;
                last = h;
                continue;
            }
            Ok(h) => format!("batch has base offset {}, expected {next}", h.base_offset),
            Err(e) => e.to_string(),
        };
        let c = corrupt(name, start + end as u64, next, why);
        if end == 0 {
            return Err(c.into());
        }
        cut = Some(c);
        break;
    }
    Ok(Gathered {
        bytes: bytes.slice(..end),
        next_offset: next,
        last,
        cut,
    })
}

/// The first batch from `(pos, base)` with a max timestamp `>= ts`, skipping batches that end
/// before `from`, looking no further than `bound` and never at a batch at or beyond offset
/// `below`. The batch returned is verified; a damaged one, or a header that cannot be walked
/// over, fails with [`LogError::Corrupt`].
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
        let at = cur.pos;
        let h = match cur.checked_header(max_batch_bytes).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(None),
            Err(HeaderError::Io(e)) => return Err(e),
            Err(HeaderError::Bad(why)) => return Err(corrupt(name, at, expect, why).into()),
        };
        if h.base_offset != expect as i64 {
            let why = format!("batch has base offset {}, expected {expect}", h.base_offset);
            return Err(corrupt(name, at, expect, why).into());
        }
        if h.base_offset as u64 >= below {
            return Ok(None);
        }
        let next = h.next_offset() as u64;
        if h.max_timestamp >= ts && next > from {
            let len = h.total_len();
            let bytes = cur.slice(at, len).await?;
            if bytes.len() != len {
                return Err(mismatch(
                    name,
                    at,
                    format!("{} of {len} bytes", bytes.len()),
                ));
            }
            if let Err(e) = check_first(&bytes, max_batch_bytes) {
                return Err(corrupt(name, at, expect, e.to_string()).into());
            }
            return Ok(Some(Found {
                bytes,
                base_offset: h.base_offset as u64,
                next_offset: next,
                damaged: Vec::new(),
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
        let at = cur.pos;
        let h = match cur.checked_header(max_batch_bytes).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Err(())),
            Err(HeaderError::Io(e)) => return Err(e),
            Err(HeaderError::Bad(why)) => return Err(corrupt(name, at, expect, why).into()),
        };
        if h.base_offset != expect as i64 {
            let why = format!("batch has base offset {}, expected {expect}", h.base_offset);
            return Err(corrupt(name, at, expect, why).into());
        }
        out.max_ts = out.max_ts.max(h.max_timestamp);
        out.last = Some(LastBatch {
            base_offset: expect,
            pos: cur.pos,
            len: h.total_len() as u32,
            crc: h.crc,
        });
        expect = h.next_offset() as u64;
        cur.pos += h.total_len() as u64;
    }
}

/// Walks from `(cur.pos, base)` (a batch boundary) over the batches a walk to `at` passes
/// ([`BatchAt::skips`]), never past the cursor's limit; leaves the cursor at the first batch it
/// does not pass and returns that batch's header (`None` at the limit) with what was walked
/// over (`pos`: where the walk stopped). Headers walked over are checked for sanity only.
async fn walk_cursor_to<S: ByteSource>(
    cur: &mut Cursor<'_, S>,
    name: &str,
    base: u64,
    at: BatchAt,
    max_batch_bytes: usize,
) -> Result<(WalkEnd, Option<BatchHeader>), LogError> {
    let mut expect = base;
    let mut out = WalkEnd {
        pos: cur.pos,
        max_ts: NO_TIMESTAMP,
        last: None,
    };
    loop {
        let p = cur.pos;
        out.pos = p;
        let h = match cur.checked_header(max_batch_bytes).await {
            Ok(Some(h)) => h,
            Ok(None) => return Ok((out, None)),
            Err(HeaderError::Io(e)) => return Err(e),
            Err(HeaderError::Bad(why)) => return Err(corrupt(name, p, expect, why).into()),
        };
        if h.base_offset != expect as i64 {
            let why = format!("batch has base offset {}, expected {expect}", h.base_offset);
            return Err(corrupt(name, p, expect, why).into());
        }
        if !at.skips(&h) {
            return Ok((out, Some(h)));
        }
        out.max_ts = out.max_ts.max(h.max_timestamp);
        out.last = Some(LastBatch {
            base_offset: expect,
            pos: p,
            len: h.total_len() as u32,
            crc: h.crc,
        });
        expect = h.next_offset() as u64;
        cur.pos += h.total_len() as u64;
    }
}

/// Walks from `(pos, base)` to the first batch not before `at` ([`BatchAt`]; zero-width
/// batches included), never past `limit`: where it stopped, with what it walked over, and
/// the header found there (`None`: every batch up to `limit` lies before `at`).
pub(crate) async fn walk_to_batch<S: ByteSource>(
    src: &S,
    name: &str,
    pos: u64,
    base: u64,
    limit: u64,
    at: BatchAt,
    max_batch_bytes: usize,
) -> Result<(WalkEnd, Option<BatchHeader>), LogError> {
    let mut cur = Cursor::new(src, pos, limit, 64 * 1024);
    walk_cursor_to(&mut cur, name, base, at, max_batch_bytes).await
}

/// What [`read_batches_at`] found.
pub(crate) struct FoundAt {
    pub bytes: Bytes,
    /// The place of the batch after the last one returned.
    pub next: BatchAt,
    /// A damaged batch the result was cut before.
    pub damaged: Vec<CorruptBatch>,
}

/// Whole batches in file order from the first one not before `at` ([`BatchAt`]; zero-width
/// batches included), starting the walk at `(pos, base)`, up to `max_bytes` but at least one
/// batch, never past `limit`. `None` when no such batch starts before `limit`. Every batch
/// returned is verified (bounds, magic, CRC-32C, record count, offsets following on): the
/// result is cut before the first damaged one, and a damaged first batch — or a header that
/// cannot be walked over before it — fails with [`LogError::Corrupt`].
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read_batches_at<S: ByteSource>(
    src: &S,
    name: &str,
    pos: u64,
    base: u64,
    limit: u64,
    at: BatchAt,
    max_bytes: usize,
    max_batch_bytes: usize,
    slack: usize,
) -> Result<Option<FoundAt>, LogError> {
    let window = max_bytes.saturating_add(slack);
    let mut cur = Cursor::new(src, pos, limit, window);
    let (_, first) = walk_cursor_to(&mut cur, name, base, at, max_batch_bytes).await?;
    let Some(first) = first else {
        return Ok(None);
    };
    let g = gather(&mut cur, name, first, max_bytes, max_batch_bytes).await?;
    Ok(Some(FoundAt {
        bytes: g.bytes,
        next: BatchAt::after(&g.last),
        damaged: g.cut.into_iter().collect(),
    }))
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
    /// Why the scan stopped before the end of the file (the torn or corrupt end).
    pub corrupt: Option<CorruptTail>,
    /// Isolated damaged batches stepped over (see [`resync`]): kept, indexed, never served.
    pub damaged: Vec<CorruptBatch>,
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
/// CRC-32C, record count, offsets following on) and extending the sparse index. A damaged
/// batch that is followed by valid data is stepped over and reported ([`resync`]); any other
/// bad byte ends the scan (a torn or unwritten end); zero padding within the last page is a
/// clean end.
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
    let mut damaged = Vec::new();
    // The first window starts at the tail page, which the appender needs anyway.
    let mut cur = Cursor::new(&src, align_down(pos), size, read_bytes);
    cur.fill((pos - align_down(pos)) as usize + BATCH_HEADER_LEN)
        .await?;
    let end_reason = loop {
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
        let reason = match verdict {
            Ok(h) if h.base_offset == next as i64 => {
                next = h.base_offset as u64;
                let len = h.total_len() as u64;
                if first_timestamp == NO_TIMESTAMP && pos == 0 {
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
                next = h.next_offset() as u64;
                pos += len;
                continue;
            }
            Ok(h) => CorruptTail::OffsetMismatch {
                expected: next,
                found: h.base_offset,
            },
            Err(e) => {
                // Zero padding of the tail page after the last batch is a clean end.
                if size <= align_up(pos) {
                    let rest = (size - pos) as usize;
                    let got = cur.fill(rest).await?;
                    if got == rest && cur.avail()[..rest].iter().all(|&b| b == 0) {
                        break None;
                    }
                }
                CorruptTail::Batch(e)
            }
        };
        let Some(skip) = resync(&mut cur, pos, next, size, max_batch_bytes).await? else {
            break Some(reason);
        };
        let why = match &reason {
            CorruptTail::Batch(e) => e.to_string(),
            CorruptTail::OffsetMismatch { expected, found } => {
                format!("batch has base offset {found}, expected {expected}")
            }
            other => format!("{other:?}"),
        };
        tracing::warn!(segment = %name, pos, offset = next, %why,
            "damaged batch inside the data: kept (reads refuse it), scanning on");
        damaged.push(corrupt(name, pos, next, why));
        // Indexed like any batch, so the offsets after it stay reachable; its timestamps
        // are not trusted.
        index.note_batch(
            (next - base_offset) as u32,
            pos as u32,
            max_ts,
            index_interval,
        );
        last_batch = Some(LastBatch {
            base_offset: next,
            pos,
            len: skip.len,
            crc: skip.crc,
        });
        batches += 1;
        next = skip.next_offset;
        pos += u64::from(skip.len);
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
        corrupt: end_reason,
        damaged,
    })
}

/// A damaged batch recovery steps over.
struct Skip {
    len: u32,
    /// Its stored CRC field (what [`LastBatch`] records).
    crc: u32,
    /// The base offset of the valid batch after it.
    next_offset: u64,
}

/// Whether the batch at `pos` (expected to start at offset `expected`), which failed
/// verification, is isolated damage inside the data — a flipped bit in acknowledged bytes —
/// rather than the torn or unwritten end of the log:
///
/// * its framing is intact: magic 2, a sane length ending inside the file, and the expected
///   base offset (or, when only the base offset is off, a valid CRC);
/// * no aligned page inside it is all zeros (a write that never reached the disk: what a
///   power cut leaves, and a torn write's tail);
/// * a valid batch (CRC-32C and all) starts right after it, with a later base offset, at
///   most one offset per byte of the damaged batch later.
///
/// Then the damaged batch is kept — reads refuse it, everything around it is served — instead
/// of cutting everything after it. Any other damage is treated as the end of the log.
async fn resync<S: ByteSource>(
    cur: &mut Cursor<'_, S>,
    pos: u64,
    expected: u64,
    size: u64,
    max_batch_bytes: usize,
) -> Result<Option<Skip>, LogError> {
    const PAGE: u64 = crate::dma::DMA_ALIGNMENT_BYTES as u64;
    cur.pos = pos;
    if cur.fill(BATCH_HEADER_LEN).await? < BATCH_HEADER_LEN {
        return Ok(None);
    }
    let Ok(h) = BatchHeader::decode(cur.avail()) else {
        return Ok(None);
    };
    let len = h.total_len();
    if h.magic != MAGIC_V2
        || h.batch_length < MIN_BATCH_LENGTH as i32
        || len > max_batch_bytes
        || pos + (len + BATCH_HEADER_LEN) as u64 > size
    {
        return Ok(None);
    }
    if cur.fill(len).await? < len {
        return Ok(None);
    }
    let bad = &cur.avail()[..len];
    if h.base_offset != expected as i64 && check_first(bad, max_batch_bytes).is_err() {
        return Ok(None);
    }
    let after = pos + len as u64;
    let mut page = align_up(pos);
    while page + PAGE <= after {
        let at = (page - pos) as usize;
        if bad[at..at + PAGE as usize].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        page += PAGE;
    }
    cur.pos = after;
    if cur.fill(BATCH_HEADER_LEN).await? < BATCH_HEADER_LEN {
        return Ok(None);
    }
    let Ok(h2) = BatchHeader::decode(cur.avail()) else {
        return Ok(None);
    };
    if h2.batch_length < MIN_BATCH_LENGTH as i32 || h2.total_len() > max_batch_bytes {
        return Ok(None);
    }
    let len2 = h2.total_len();
    if after + len2 as u64 > size || cur.fill(len2).await? < len2 {
        return Ok(None);
    }
    let Ok(h2) = check_first(cur.avail(), max_batch_bytes) else {
        return Ok(None);
    };
    let gap = h2.base_offset - expected as i64;
    if gap <= 0 || gap > len as i64 {
        return Ok(None);
    }
    Ok(Some(Skip {
        len: len as u32,
        crc: h.crc,
        next_offset: h2.base_offset as u64,
    }))
}
