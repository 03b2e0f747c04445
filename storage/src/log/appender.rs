//! The segment appender: appended bytes collect in aligned in-memory chunks; a flush hands the
//! chunks to aligned writes and keeps a copy of the partial tail page, which the next flush
//! writes again (O_DIRECT cannot write less than a page).
//!
//! Three positions, as distinct types so they cannot be mixed up, with
//! `committed <= stable <= dirty` asserted on every update (the assertion stays on in
//! release builds: a violation means acknowledged data could be lost):
//! * [`DirtyPos`]: bytes appended (in memory);
//! * [`StablePos`]: bytes written to the file (visible to reads, not yet durable);
//! * [`CommittedPos`]: bytes covered by a completed `fdatasync`.

use std::collections::VecDeque;

use super::file::{align_down, align_up, is_aligned, IoBuf, SegmentDir, MAX_IO_CAP_BYTES};

/// End of the bytes appended to the segment (in memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirtyPos(pub u64);
/// End of the bytes written to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StablePos(pub u64);
/// End of the bytes made durable by `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommittedPos(pub u64);

struct Chunk<B> {
    /// File position of `buf[0]`; aligned.
    pos: u64,
    buf: B,
    /// Bytes of `buf` filled.
    len: usize,
}

/// One aligned write handed out by [`Appender::take_writes`].
pub struct Write<B> {
    pub pos: u64,
    pub buf: B,
    /// Bytes of `buf` to write (aligned; the bytes past the data are zero).
    pub len: usize,
}

/// Writes covering the segment up to `end`.
pub struct PendingWrites<B> {
    pub writes: Vec<Write<B>>,
    pub end: DirtyPos,
}

pub struct Appender<D: SegmentDir> {
    dir: D,
    chunk_bytes: usize,
    /// Bytes not yet handed to a write, plus the tail page of the last write; the last chunk
    /// is the open one. Empty when `dirty` is aligned, when the tail is parked, or when the
    /// appender is sealed and written.
    chunks: VecDeque<Chunk<D::Buf>>,
    /// The partial tail page `[pos, dirty)` while no chunk is open, on the heap and exactly
    /// as long as its data: an idle segment holds at most 4 KiB here, not a whole DMA chunk.
    /// Moved into a DMA chunk by the next append.
    parked: Option<(u64, Vec<u8>)>,
    dirty: DirtyPos,
    /// Handed to writes (in flight or done): `stable <= taken <= dirty`.
    taken: u64,
    stable: StablePos,
    committed: CommittedPos,
    sealed: bool,
}

impl<D: SegmentDir> Appender<D> {
    /// An appender for a segment whose file already holds `end` durable bytes; `tail` is the
    /// partial last page, `[align_down(end), end)`.
    pub fn new(dir: D, chunk_bytes: usize, end: u64, tail: &[u8]) -> Self {
        assert!(
            is_aligned(chunk_bytes as u64) && chunk_bytes > 0 && chunk_bytes <= MAX_IO_CAP_BYTES,
            "write chunk of {chunk_bytes} bytes"
        );
        let mut a = Self {
            dir,
            chunk_bytes,
            chunks: VecDeque::new(),
            parked: None,
            dirty: DirtyPos(end),
            taken: end,
            stable: StablePos(end),
            committed: CommittedPos(end),
            sealed: false,
        };
        a.load_tail(end, tail);
        a.check();
        a
    }

    /// An appender for a closed segment of `end` durable bytes: sealed, holding no memory.
    pub fn sealed(dir: D, chunk_bytes: usize, end: u64) -> Self {
        let mut a = Self::new(dir, chunk_bytes, align_down(end), &[]);
        a.dirty = DirtyPos(end);
        a.taken = end;
        a.stable = StablePos(end);
        a.committed = CommittedPos(end);
        a.sealed = true;
        a.check();
        a
    }

    fn load_tail(&mut self, end: u64, tail: &[u8]) {
        assert_eq!(
            tail.len() as u64,
            end - align_down(end),
            "tail page does not end at {end}"
        );
        self.chunks.clear();
        self.parked = (!tail.is_empty()).then(|| (align_down(end), tail.to_vec()));
    }

    /// Moves a parked tail page into an open DMA chunk.
    fn unpark(&mut self) {
        if let Some((pos, tail)) = self.parked.take() {
            debug_assert!(self.chunks.is_empty());
            let mut buf = self.dir.alloc_buf(self.chunk_bytes);
            buf.as_mut_slice()[..tail.len()].copy_from_slice(&tail);
            self.chunks.push_back(Chunk {
                pos,
                buf,
                len: tail.len(),
            });
        }
    }

    fn check(&self) {
        assert!(
            self.committed.0 <= self.stable.0
                && self.stable.0 <= self.taken
                && self.taken <= self.dirty.0,
            "appender positions out of order: committed {:?} stable {:?} taken {} dirty {:?}",
            self.committed,
            self.stable,
            self.taken,
            self.dirty
        );
        debug_assert!(self.parked.is_none() || self.chunks.is_empty());
    }

    pub fn dirty(&self) -> DirtyPos {
        self.dirty
    }
    pub fn stable(&self) -> StablePos {
        self.stable
    }
    pub fn committed(&self) -> CommittedPos {
        self.committed
    }
    /// Bytes appended but not yet handed to a write.
    pub fn unwritten(&self) -> u64 {
        self.dirty.0 - self.taken
    }
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Bytes of memory held (DMA chunks and the parked tail).
    pub fn memory_bytes(&self) -> usize {
        self.chunks.len() * self.chunk_bytes + self.parked.as_ref().map_or(0, |(_, t)| t.len())
    }

    /// Appends the concatenation of `parts` (one copy, into the chunk buffers).
    pub fn append(&mut self, parts: &[&[u8]]) {
        assert!(!self.sealed, "append to a sealed segment");
        self.unpark();
        let mut total = 0u64;
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let need_new = self.chunks.back().is_none_or(|c| c.len == self.chunk_bytes);
                if need_new {
                    let pos = match self.chunks.back() {
                        Some(c) => c.pos + c.len as u64,
                        None => {
                            let at = self.dirty.0 + total;
                            assert!(is_aligned(at), "no open chunk at {at}");
                            at
                        }
                    };
                    let buf = self.dir.alloc_buf(self.chunk_bytes);
                    self.chunks.push_back(Chunk { pos, buf, len: 0 });
                }
                let c = self.chunks.back_mut().expect("an open chunk");
                let n = rest.len().min(self.chunk_bytes - c.len);
                c.buf.as_mut_slice()[c.len..c.len + n].copy_from_slice(&rest[..n]);
                c.len += n;
                rest = &rest[n..];
                total += n as u64;
            }
        }
        self.dirty = DirtyPos(self.dirty.0 + total);
        self.check();
    }

    /// Hands every unwritten byte to aligned writes, keeping a copy of the partial tail page
    /// (parked on the heap) for the next flush. `None` when there is nothing new.
    pub fn take_writes(&mut self) -> Option<PendingWrites<D::Buf>> {
        if self.taken == self.dirty.0 {
            return None;
        }
        self.unpark();
        let mut writes = Vec::with_capacity(self.chunks.len());
        let mut keep = None;
        while let Some(mut c) = self.chunks.pop_front() {
            let is_last = self.chunks.is_empty();
            let len = if c.len == self.chunk_bytes {
                c.len
            } else {
                assert!(is_last, "a partial chunk before the open one");
                let full = align_down(c.len as u64) as usize;
                let padded = align_up(c.len as u64) as usize;
                if full < c.len {
                    keep = Some((c.pos + full as u64, c.buf.as_slice()[full..c.len].to_vec()));
                }
                // DMA memory is not zeroed: the padding must not leak stale bytes to disk.
                c.buf.as_mut_slice()[c.len..padded].fill(0);
                padded
            };
            if len > 0 {
                writes.push(Write {
                    pos: c.pos,
                    buf: c.buf,
                    len,
                });
            }
        }
        self.parked = keep;
        self.taken = self.dirty.0;
        self.check();
        Some(PendingWrites {
            writes,
            end: self.dirty,
        })
    }

    /// Takes back the writes of a flush that failed (a full disk), in the order
    /// [`Self::take_writes`] handed them out: every byte from the stable position is in memory
    /// again and the next [`Self::take_writes`] hands it out anew. Costs one copy of the
    /// unwritten bytes (a rare path).
    pub fn requeue(&mut self, writes: Vec<Write<D::Buf>>) {
        let Some(first) = writes.first() else {
            return;
        };
        let start = first.pos;
        assert!(
            start <= self.stable.0 && align_down(self.stable.0) <= start,
            "requeued writes start at {start}, stable is {:?}",
            self.stable
        );
        let mut data = vec![0u8; (self.dirty.0 - start) as usize];
        let mut put = |pos: u64, bytes: &[u8]| {
            let at = (pos - start) as usize;
            let n = bytes.len().min(data.len().saturating_sub(at));
            data[at..at + n].copy_from_slice(&bytes[..n]);
        };
        for w in &writes {
            put(w.pos, &w.buf.as_slice()[..w.len]);
        }
        // Appends made since the job was taken are newer than its copy of the tail page.
        if let Some((pos, tail)) = &self.parked {
            put(*pos, tail);
        }
        for c in &self.chunks {
            put(c.pos, &c.buf.as_slice()[..c.len]);
        }
        drop(writes);
        self.chunks.clear();
        self.parked = None;
        for (i, piece) in data.chunks(self.chunk_bytes).enumerate() {
            let mut buf = self.dir.alloc_buf(self.chunk_bytes);
            buf.as_mut_slice()[..piece.len()].copy_from_slice(piece);
            self.chunks.push_back(Chunk {
                pos: start + (i * self.chunk_bytes) as u64,
                buf,
                len: piece.len(),
            });
        }
        self.taken = self.stable.0;
        self.check();
    }

    /// The bytes `[pos, pos + len)` if all of them are in memory.
    pub fn read_memory(&self, pos: u64, len: usize) -> Option<Vec<u8>> {
        let end = pos + len as u64;
        if end > self.dirty.0 {
            return None;
        }
        let mut out = vec![0u8; len];
        let mut covered = 0usize;
        let mut copy = |cpos: u64, bytes: &[u8]| {
            let (s, e) = (cpos.max(pos), (cpos + bytes.len() as u64).min(end));
            if s < e {
                out[(s - pos) as usize..(e - pos) as usize]
                    .copy_from_slice(&bytes[(s - cpos) as usize..(e - cpos) as usize]);
                covered += (e - s) as usize;
            }
        };
        if let Some((p, t)) = &self.parked {
            copy(*p, t);
        }
        for c in &self.chunks {
            copy(c.pos, &c.buf.as_slice()[..c.len]);
        }
        (covered == len).then_some(out)
    }

    /// Where the bytes held in memory start (`None`: none are).
    pub fn memory_start(&self) -> Option<u64> {
        self.parked
            .as_ref()
            .map(|(p, _)| *p)
            .or_else(|| self.chunks.front().map(|c| c.pos))
    }

    /// The writes up to `end` have completed.
    pub fn mark_stable(&mut self, end: DirtyPos) {
        assert!(end.0 <= self.taken, "stable beyond what was written");
        self.stable = StablePos(self.stable.0.max(end.0));
        self.check();
    }

    /// An `fdatasync` issued after the writes up to `end` completed has returned.
    pub fn mark_committed(&mut self, end: StablePos) {
        assert!(end.0 <= self.stable.0, "committed beyond stable");
        self.committed = CommittedPos(self.committed.0.max(end.0));
        self.check();
    }

    /// No more appends; frees the tail page once everything is written.
    pub fn seal(&mut self) {
        self.sealed = true;
        self.release_if_sealed();
    }

    pub fn release_if_sealed(&mut self) {
        if self.sealed && self.taken == self.dirty.0 {
            self.chunks.clear();
            self.parked = None;
        }
    }

    /// Cuts the segment at `pos` using memory only; `false` when the tail page must be read
    /// from the file (then call [`Self::reset`]). Only with no write in flight.
    pub fn truncate_in_memory(&mut self, pos: u64) -> bool {
        assert!(pos <= self.dirty.0, "truncating beyond the end");
        assert_eq!(
            self.taken, self.stable.0,
            "truncating with a write in flight"
        );
        self.unpark();
        let Some(idx) = self.chunks.iter().rposition(|c| c.pos <= pos) else {
            // No chunk holds `pos`: fine only when nothing changes and no tail page is needed.
            if pos == self.dirty.0 && is_aligned(pos) {
                self.chunks.clear();
                self.set_end(pos);
                return true;
            }
            return false;
        };
        self.chunks.truncate(idx + 1);
        let c = self.chunks.back_mut().expect("chunk at idx");
        c.len = (pos - c.pos) as usize;
        self.set_end(pos);
        true
    }

    /// Cuts the segment at `pos`, with `tail` = the file's bytes `[align_down(pos), pos)`.
    pub fn reset(&mut self, pos: u64, tail: &[u8]) {
        assert!(pos <= self.dirty.0, "truncating beyond the end");
        assert_eq!(
            self.taken, self.stable.0,
            "truncating with a write in flight"
        );
        self.load_tail(pos, tail);
        self.set_end(pos);
    }

    fn set_end(&mut self, pos: u64) {
        self.sealed = false;
        self.dirty = DirtyPos(pos);
        self.taken = self.taken.min(pos);
        self.stable = StablePos(self.stable.0.min(pos));
        self.committed = CommittedPos(self.committed.0.min(pos));
        self.check();
    }
}

#[cfg(test)]
mod tests {
    use super::super::faulty::FaultyDir;
    use super::*;

    fn bytes_of(w: &PendingWrites<Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
        w.writes
            .iter()
            .map(|w| (w.pos, w.buf[..w.len].to_vec()))
            .collect()
    }

    #[test]
    fn tail_page_is_rewritten_and_padding_is_zero() {
        let mut a = Appender::new(FaultyDir::new(1), 8192, 0, &[]);
        a.append(&[&[1u8; 100], &[2u8; 50]]);
        let w = a.take_writes().unwrap();
        let ws = bytes_of(&w);
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].0, 0);
        assert_eq!(ws[0].1.len(), 4096);
        assert_eq!(&ws[0].1[..100], &[1u8; 100]);
        assert_eq!(&ws[0].1[100..150], &[2u8; 50]);
        assert!(ws[0].1[150..].iter().all(|&b| b == 0));
        a.mark_stable(w.end);
        a.mark_committed(StablePos(150));
        assert!(a.take_writes().is_none());
        // Crossing chunk and page boundaries.
        a.append(&[&[3u8; 10_000]]);
        let w = a.take_writes().unwrap();
        let ws = bytes_of(&w);
        assert_eq!(ws[0].0, 0);
        assert_eq!(ws[0].1.len(), 8192);
        assert_eq!(&ws[0].1[..100], &[1u8; 100]);
        assert_eq!(ws[1].0, 8192);
        assert_eq!(ws[1].1.len(), 4096); // 10_150 - 8192 = 1958 bytes, padded
        assert_eq!(w.end, DirtyPos(10_150));
        a.mark_stable(w.end);
        // The next flush starts at the tail page.
        a.append(&[&[4u8; 1]]);
        let ws = bytes_of(&a.take_writes().unwrap());
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].0, 8192);
        assert_eq!(ws[0].1[1958], 4);
        assert_eq!(ws[0].1[1957], 3);
    }

    #[test]
    #[should_panic(expected = "committed beyond stable")]
    fn committed_cannot_pass_stable() {
        let mut a = Appender::new(FaultyDir::new(1), 8192, 0, &[]);
        a.append(&[&[1u8; 100]]);
        a.mark_committed(StablePos(100));
    }

    #[test]
    fn truncation_in_memory_and_from_tail() {
        let mut a = Appender::new(FaultyDir::new(1), 8192, 5000, &[7u8; 5000 - 4096]);
        a.append(&[&[1u8; 20_000]]);
        assert!(a.truncate_in_memory(6000));
        assert_eq!(a.dirty(), DirtyPos(6000));
        assert_eq!(a.committed(), CommittedPos(5000));
        let ws = bytes_of(&a.take_writes().unwrap());
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].0, 4096);
        assert_eq!(&ws[0].1[..904], &[7u8; 904][..]);
        assert_eq!(&ws[0].1[904..1904], &[1u8; 1000][..]);
        a.mark_stable(DirtyPos(6000));
        // Below the first chunk: the tail comes from the file.
        assert!(!a.truncate_in_memory(100));
        a.reset(100, &[9u8; 100]);
        assert_eq!(a.stable(), StablePos(100));
        assert_eq!(a.committed(), CommittedPos(100));
    }
}
