//! The sparse per-segment index: one entry per `index_interval_bytes` of log (Kafka's
//! `index.interval.bytes`, 4 KiB by default), each `(relative offset, file position, largest
//! timestamp of every batch before it)`. A lookup by offset or by timestamp lands on one entry
//! and scans at most one interval (plus one batch) of the segment from there.
//!
//! On disk, next to `{base:020}-{term}.log`, the same entries as two files with a CRC-32C each
//! (read only as a pair, see [`decode_files`]):
//!
//! * `{base:020}-{term}.index`: relative offset → position, plus what the index covers
//!   ([`IndexMeta`]: bytes, next offset, whether the segment was complete, its last batch);
//! * `{base:020}-{term}.timeindex`: largest timestamp so far → relative offset, plus the
//!   segment's largest and first batch timestamps.
//!
//! Both are written once a sealed segment is durable (by the flush that completes it) and, for
//! the active segment, by a clean [`super::PartitionLog::close`]. An index file whose `size`
//! is below the segment's is a valid *prefix*: recovery scans only the bytes after it.

/// One index point: the batch at `pos` has base offset `base + rel_offset`; every batch
/// before it in the segment has a max timestamp `<= max_ts_before` (−1 when there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub rel_offset: u32,
    pub pos: u32,
    pub max_ts_before: i64,
}

/// Timestamp used when a segment has no batch with a timestamp (Kafka's `NO_TIMESTAMP`).
pub const NO_TIMESTAMP: i64 = -1;

/// The in-memory sparse index of one segment (16 bytes per entry).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentIndex {
    entries: Vec<IndexEntry>,
}

impl SegmentIndex {
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn memory_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<IndexEntry>()
    }

    /// Notes a batch appended at `pos` (relative offset `rel_offset`); `max_ts_before` is the
    /// largest timestamp of the batches before it. Adds an entry for the first batch and then
    /// whenever `interval` bytes have passed since the last entry — but never a second entry
    /// for one offset: a zero-width control batch ([`super::batch::BatchHeader::is_zero_width`])
    /// shares its base offset with the batch after it, and the entry stays on the first of
    /// them (a walk from it passes over the zero-width ones).
    pub fn note_batch(&mut self, rel_offset: u32, pos: u32, max_ts_before: i64, interval: u32) {
        let due = self
            .entries
            .last()
            .is_none_or(|e| pos.saturating_sub(e.pos) >= interval && e.rel_offset != rel_offset);
        if due {
            debug_assert!(self
                .entries
                .last()
                .is_none_or(|e| e.rel_offset < rel_offset && e.pos < pos));
            self.entries.push(IndexEntry {
                rel_offset,
                pos,
                max_ts_before,
            });
        }
    }

    /// The entry to start scanning from for `rel_offset`: the last one at or below it — or
    /// the first one, when `rel_offset` lies before it (a compacted segment whose first
    /// batches were removed starts after its base offset). `None` only when empty.
    pub fn lookup_offset(&self, rel_offset: u32) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.rel_offset <= rel_offset);
        self.entries.get(i.saturating_sub(1)).copied()
    }

    /// The entry to start a walk from that must not miss a batch starting at `rel_offset`
    /// (zero-width ones included): the last one strictly below it — or the first one (the
    /// segment's first batch). `None` only when empty.
    pub fn lookup_before(&self, rel_offset: u32) -> Option<IndexEntry> {
        let i = self.entries.partition_point(|e| e.rel_offset < rel_offset);
        self.entries.get(i.saturating_sub(1)).copied()
    }

    /// Where the first batch with a max timestamp `>= ts` lies: scan from the returned
    /// entry up to the position bound (`None`: to the segment's end). The batches before the
    /// entry are all older than `ts`; the batch of the next entry already has a newer
    /// predecessor, so the answer lies before it.
    pub fn lookup_time(&self, ts: i64) -> Option<(IndexEntry, Option<u32>)> {
        let i = self.entries.partition_point(|e| e.max_ts_before < ts);
        let start = i.saturating_sub(1);
        let first = *self.entries.get(start)?;
        let bound = self.entries.get(start + 1).map(|e| e.pos);
        Some((first, bound))
    }

    /// Drops the entries for batches at or after `rel_offset`.
    pub fn truncate(&mut self, rel_offset: u32) {
        let keep = self.entries.partition_point(|e| e.rel_offset < rel_offset);
        self.entries.truncate(keep);
    }

    /// Drops the entries for batches at or after file position `pos`.
    pub fn truncate_pos(&mut self, pos: u32) {
        let keep = self.entries.partition_point(|e| e.pos < pos);
        self.entries.truncate(keep);
    }

    /// The last entry, if any.
    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    pub fn from_entries(entries: Vec<IndexEntry>) -> Self {
        Self { entries }
    }
}

/// The last batch an index covers (checked against the segment when the index is loaded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastBatch {
    pub base_offset: u64,
    pub pos: u64,
    pub len: u32,
    /// The batch's stored CRC-32C field.
    pub crc: u32,
}

/// What an index file pair says about its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexMeta {
    pub base_offset: u64,
    /// Offset after the last covered batch.
    pub next_offset: u64,
    /// Bytes of the segment covered (the end of the last covered batch).
    pub size: u64,
    /// The segment was sealed: nothing follows `size`.
    pub complete: bool,
    /// Largest batch max timestamp in the covered bytes ([`NO_TIMESTAMP`] if none).
    pub max_timestamp: i64,
    /// Max timestamp of the first batch (the base for `segment_ms` rolling).
    pub first_timestamp: i64,
    pub last_batch: Option<LastBatch>,
}

const INDEX_MAGIC: &[u8; 4] = b"SPIX";
const TIME_MAGIC: &[u8; 4] = b"SPTI";
const VERSION: u32 = 1;
const INDEX_HEADER: usize = 4 + 4 + 8 + 8 + 8 + 4 + 4 + 8 + 8 + 4 + 4;
const TIME_HEADER: usize = 4 + 4 + 8 + 4 + 8 + 8;

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_be_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self
            .buf
            .get(self.at..self.at + N)
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += N;
        Ok(s.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32, String> {
        self.take::<4>().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, String> {
        self.take::<8>().map(u64::from_be_bytes)
    }
    fn i64(&mut self) -> Result<i64, String> {
        self.take::<8>().map(i64::from_be_bytes)
    }
}

/// Encodes the `.index` and `.timeindex` files (unpadded).
pub fn encode_files(index: &SegmentIndex, meta: &IndexMeta) -> (Vec<u8>, Vec<u8>) {
    let n = index.entries.len();
    let mut ix = Vec::with_capacity(INDEX_HEADER + n * 8 + 4);
    ix.extend_from_slice(INDEX_MAGIC);
    put_u32(&mut ix, VERSION);
    put_u64(&mut ix, meta.base_offset);
    put_u64(&mut ix, meta.next_offset);
    put_u64(&mut ix, meta.size);
    put_u32(&mut ix, u32::from(meta.complete));
    put_u32(&mut ix, n as u32);
    let lb = meta.last_batch;
    put_u64(&mut ix, lb.map_or(u64::MAX, |b| b.base_offset));
    put_u64(&mut ix, lb.map_or(0, |b| b.pos));
    put_u32(&mut ix, lb.map_or(0, |b| b.len));
    put_u32(&mut ix, lb.map_or(0, |b| b.crc));
    for e in &index.entries {
        put_u32(&mut ix, e.rel_offset);
        put_u32(&mut ix, e.pos);
    }
    let crc = crc32c::crc32c(&ix);
    put_u32(&mut ix, crc);

    let mut tx = Vec::with_capacity(TIME_HEADER + n * 12 + 4);
    tx.extend_from_slice(TIME_MAGIC);
    put_u32(&mut tx, VERSION);
    put_u64(&mut tx, meta.base_offset);
    put_u32(&mut tx, n as u32);
    put_u64(&mut tx, meta.max_timestamp as u64);
    put_u64(&mut tx, meta.first_timestamp as u64);
    for e in &index.entries {
        put_u64(&mut tx, e.max_ts_before as u64);
        put_u32(&mut tx, e.rel_offset);
    }
    let crc = crc32c::crc32c(&tx);
    put_u32(&mut tx, crc);
    (ix, tx)
}

/// Decodes an `.index` / `.timeindex` pair (trailing bytes, e.g. DMA padding, are ignored).
/// Any inconsistency is an error naming it; the caller rebuilds the index from the segment.
pub fn decode_files(ix: &[u8], tx: &[u8]) -> Result<(SegmentIndex, IndexMeta), String> {
    let mut r = Reader { buf: ix, at: 0 };
    if &r.take::<4>()? != INDEX_MAGIC {
        return Err("index: bad magic".into());
    }
    if r.u32()? != VERSION {
        return Err("index: unknown version".into());
    }
    let base_offset = r.u64()?;
    let next_offset = r.u64()?;
    let size = r.u64()?;
    let flags = r.u32()?;
    let n = r.u32()? as usize;
    let lb_base = r.u64()?;
    let lb_pos = r.u64()?;
    let lb_len = r.u32()?;
    let lb_crc = r.u32()?;
    let body = INDEX_HEADER + n * 8;
    if ix.len() < body + 4 {
        return Err(format!("index: {n} entries need {} bytes", body + 4));
    }
    let stored = u32::from_be_bytes(ix[body..body + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&ix[..body]) != stored {
        return Err("index: checksum mismatch".into());
    }
    let mut t = Reader { buf: tx, at: 0 };
    if &t.take::<4>()? != TIME_MAGIC {
        return Err("timeindex: bad magic".into());
    }
    if t.u32()? != VERSION {
        return Err("timeindex: unknown version".into());
    }
    if t.u64()? != base_offset {
        return Err("timeindex: base offset differs from the index".into());
    }
    if t.u32()? as usize != n {
        return Err("timeindex: entry count differs from the index".into());
    }
    let max_timestamp = t.i64()?;
    let first_timestamp = t.i64()?;
    let tbody = TIME_HEADER + n * 12;
    if tx.len() < tbody + 4 {
        return Err(format!("timeindex: {n} entries need {} bytes", tbody + 4));
    }
    let stored = u32::from_be_bytes(tx[tbody..tbody + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&tx[..tbody]) != stored {
        return Err("timeindex: checksum mismatch".into());
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let rel_offset = r.u32()?;
        let pos = r.u32()?;
        let max_ts_before = t.i64()?;
        if t.u32()? != rel_offset {
            return Err("timeindex: entries differ from the index".into());
        }
        if entries.last().is_some_and(|e: &IndexEntry| {
            e.rel_offset >= rel_offset || e.pos >= pos || e.max_ts_before > max_ts_before
        }) || u64::from(pos) >= size.max(1)
        {
            return Err("index: entries out of order".into());
        }
        entries.push(IndexEntry {
            rel_offset,
            pos,
            max_ts_before,
        });
    }
    if next_offset < base_offset || (n > 0) != (size > 0) {
        return Err("index: header out of range".into());
    }
    let last_batch = (lb_base != u64::MAX).then_some(LastBatch {
        base_offset: lb_base,
        pos: lb_pos,
        len: lb_len,
        crc: lb_crc,
    });
    if size > 0
        && last_batch
            .is_none_or(|b| b.pos + u64::from(b.len) != size || b.base_offset >= next_offset)
    {
        return Err("index: last batch does not end the covered bytes".into());
    }
    Ok((
        SegmentIndex { entries },
        IndexMeta {
            base_offset,
            next_offset,
            size,
            complete: flags & 1 != 0,
            max_timestamp,
            first_timestamp,
            last_batch,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SegmentIndex, IndexMeta) {
        let mut ix = SegmentIndex::default();
        // Batches of 1000 bytes, 2 offsets each, timestamps 10, 5, 30, 20, ...
        let ts = [10i64, 5, 30, 20, 40, 40, 50, 45, 60, 70];
        let mut max = NO_TIMESTAMP;
        for (i, t) in ts.iter().enumerate() {
            ix.note_batch(i as u32 * 2, i as u32 * 1000, max, 3000);
            max = max.max(*t);
        }
        let meta = IndexMeta {
            base_offset: 100,
            next_offset: 120,
            size: 10_000,
            complete: true,
            max_timestamp: max,
            first_timestamp: 10,
            last_batch: Some(LastBatch {
                base_offset: 118,
                pos: 9000,
                len: 1000,
                crc: 7,
            }),
        };
        (ix, meta)
    }

    #[test]
    fn entries_every_interval_and_lookups() {
        let (ix, _) = sample();
        // An entry for the first batch, then one each time 3000 bytes have passed.
        let pos: Vec<u32> = ix.entries().iter().map(|e| e.pos).collect();
        assert_eq!(pos, [0, 3000, 6000, 9000]);
        let before: Vec<i64> = ix.entries().iter().map(|e| e.max_ts_before).collect();
        assert_eq!(before, [NO_TIMESTAMP, 30, 40, 60]);
        assert_eq!(ix.lookup_offset(0).unwrap().pos, 0);
        assert_eq!(ix.lookup_offset(5).unwrap().pos, 0);
        assert_eq!(ix.lookup_offset(6).unwrap().pos, 3000);
        assert_eq!(ix.lookup_offset(1000).unwrap().pos, 9000);
        let (e, bound) = ix.lookup_time(35).unwrap();
        assert_eq!((e.pos, bound), (3000, Some(6000)));
        let (e, bound) = ix.lookup_time(45).unwrap();
        assert_eq!((e.pos, bound), (6000, Some(9000)));
        let (e, bound) = ix.lookup_time(1000).unwrap();
        assert_eq!((e.pos, bound), (9000, None));
        let (e, bound) = ix.lookup_time(i64::MIN).unwrap();
        assert_eq!((e.pos, bound), (0, Some(3000)));
        let mut t = ix.clone();
        t.truncate(7);
        assert_eq!(t.len(), 2);
        assert_eq!(SegmentIndex::default().lookup_offset(3), None);
        assert_eq!(ix.lookup_before(6).unwrap().pos, 0);
        assert_eq!(ix.lookup_before(7).unwrap().pos, 3000);
        assert_eq!(ix.lookup_before(0).unwrap().pos, 0);
        let mut t = ix.clone();
        t.truncate_pos(3000);
        assert_eq!(t.len(), 1);
        // Zero-width batches share their offset with the next batch: one entry per offset.
        let mut zw = SegmentIndex::default();
        zw.note_batch(0, 0, NO_TIMESTAMP, 1);
        zw.note_batch(0, 61, NO_TIMESTAMP, 1);
        zw.note_batch(0, 122, NO_TIMESTAMP, 1);
        zw.note_batch(3, 300, NO_TIMESTAMP, 1);
        let pos: Vec<u32> = zw.entries().iter().map(|e| e.pos).collect();
        assert_eq!(pos, [0, 300]);
        // A segment whose first batch starts after its base (compacted).
        let mut late = SegmentIndex::default();
        late.note_batch(5, 0, NO_TIMESTAMP, 3000);
        assert_eq!(late.lookup_offset(0).unwrap().rel_offset, 5);
    }

    #[test]
    fn files_round_trip_and_reject_damage() {
        let (ix, meta) = sample();
        let (a, b) = encode_files(&ix, &meta);
        let mut padded = a.clone();
        padded.resize(4096, 0);
        assert_eq!(decode_files(&padded, &b).unwrap(), (ix.clone(), meta));
        for i in [0, 9, 30, a.len() - 1] {
            let mut bad = a.clone();
            bad[i] ^= 1;
            assert!(decode_files(&bad, &b).is_err(), "flipped byte {i}");
        }
        let mut bad = b.clone();
        bad[30] ^= 1;
        assert!(decode_files(&a, &bad).is_err());
        assert!(decode_files(&a[..a.len() - 1], &b).is_err());
        // A time index from another segment.
        let (_, b2) = encode_files(
            &ix,
            &IndexMeta {
                base_offset: 7,
                ..meta
            },
        );
        assert!(decode_files(&a, &b2).is_err());
    }
}
