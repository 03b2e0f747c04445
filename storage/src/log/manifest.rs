//! The segment checkpoint of a partition directory, file [`FILE`]: the list of closed
//! segments whose index files are complete, with what recovery needs to know about each
//! (size, next offset, timestamps), the durable log end when it was written, and — when
//! written by a clean [`super::PartitionLog::close`] — the active segment's sparse index as a
//! *prefix* (what it covers, its last batch).
//!
//! Written by a clean close and refreshed by the flush that completes a rolled segment's index
//! files. It describes only durable bytes that can no longer change (closed segments; the
//! active segment below the prefix, which only grows), so it stays true while the log grows:
//! recovery trusts the closed segments it lists without reading them (their files are opened
//! and their indexes loaded on first use) and scans the active segment only after the prefix.
//! Whatever could make it false removes it durably first ([`super::PartitionLog`]'s suffix
//! truncation). Segments deleted since (retention, prefix truncation) are simply missing from
//! the directory and skipped.
//!
//! Binary, written in place through the file seam with a CRC-32C over everything; a torn or
//! damaged file is ignored (recovery then reads each closed segment's index header instead).

use super::file::{read_small_file, write_small_file, SegmentDir};
use super::index::{decode_files, encode_files, IndexMeta, SegmentIndex};
use super::segment::segment_name;

pub const FILE: &str = "segments.checkpoint";
const MAGIC: &[u8; 4] = b"SPCK";
const VERSION: u32 = 1;
const ENTRY_BYTES: usize = 6 * 8;

/// One closed segment, as the checkpoint records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestSegment {
    pub base_offset: u64,
    pub term: u64,
    pub size: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
}

impl ManifestSegment {
    pub fn name(&self) -> String {
        segment_name(self.base_offset, self.term)
    }
}

/// The active segment's sparse index up to what was durable at a clean close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivePrefix {
    pub term: u64,
    pub index: SegmentIndex,
    pub meta: IndexMeta,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The committed (durable) log end when the checkpoint was written: recovery warns if it
    /// finds less.
    pub durable_end: u64,
    pub segments: Vec<ManifestSegment>,
    pub active: Option<ActivePrefix>,
}

pub fn encode(m: &Manifest) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + m.segments.len() * ENTRY_BYTES);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_be_bytes());
    v.extend_from_slice(&m.durable_end.to_be_bytes());
    v.extend_from_slice(&(m.segments.len() as u32).to_be_bytes());
    for s in &m.segments {
        for x in [
            s.base_offset,
            s.term,
            s.size,
            s.next_offset,
            s.max_timestamp as u64,
            s.first_timestamp as u64,
        ] {
            v.extend_from_slice(&x.to_be_bytes());
        }
    }
    let crc = crc32c::crc32c(&v);
    v.extend_from_slice(&crc.to_be_bytes());
    // The active prefix: the two index encodings (each with its own CRC), length-prefixed.
    if let Some(a) = &m.active {
        let (ix, tx) = encode_files(&a.index, &a.meta);
        v.extend_from_slice(&a.term.to_be_bytes());
        v.extend_from_slice(&(ix.len() as u32).to_be_bytes());
        v.extend_from_slice(&ix);
        v.extend_from_slice(&(tx.len() as u32).to_be_bytes());
        v.extend_from_slice(&tx);
    } else {
        v.extend_from_slice(&u64::MAX.to_be_bytes());
    }
    v
}

fn decode_active(b: &[u8]) -> Result<Option<ActivePrefix>, String> {
    let take = |at: usize, n: usize| b.get(at..at + n).ok_or("active prefix: truncated");
    let term = u64::from_be_bytes(take(0, 8)?.try_into().expect("8 bytes"));
    if term == u64::MAX {
        return Ok(None);
    }
    let ix_len = u32::from_be_bytes(take(8, 4)?.try_into().expect("4 bytes")) as usize;
    let ix = take(12, ix_len)?;
    let at = 12 + ix_len;
    let tx_len = u32::from_be_bytes(take(at, 4)?.try_into().expect("4 bytes")) as usize;
    let tx = take(at + 4, tx_len)?;
    let (index, meta) = decode_files(ix, tx).map_err(|e| format!("active prefix: {e}"))?;
    Ok(Some(ActivePrefix { term, index, meta }))
}

pub fn decode(b: &[u8]) -> Result<Manifest, String> {
    let u64_at = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let u32_at = |at: usize| u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    if b.len() < 24 || &b[..4] != MAGIC {
        return Err("bad magic".into());
    }
    if u32_at(4) != VERSION {
        return Err("unknown version".into());
    }
    let durable_end = u64_at(8);
    let n = u32_at(16) as usize;
    let body = 20 + n * ENTRY_BYTES;
    if b.len() < body + 4 {
        return Err(format!("{n} entries need {} bytes", body + 4));
    }
    if crc32c::crc32c(&b[..body]) != u32_at(body) {
        return Err("checksum mismatch".into());
    }
    let mut segments = Vec::with_capacity(n);
    for i in 0..n {
        let at = 20 + i * ENTRY_BYTES;
        let s = ManifestSegment {
            base_offset: u64_at(at),
            term: u64_at(at + 8),
            size: u64_at(at + 16),
            next_offset: u64_at(at + 24),
            max_timestamp: u64_at(at + 32) as i64,
            first_timestamp: u64_at(at + 40) as i64,
        };
        if s.next_offset < s.base_offset
            || segments
                .last()
                .is_some_and(|p: &ManifestSegment| p.next_offset > s.base_offset)
        {
            return Err(format!("entry {i} out of order"));
        }
        segments.push(s);
    }
    let active = decode_active(&b[body + 4..])?;
    Ok(Manifest {
        durable_end,
        segments,
        active,
    })
}

/// Writes the checkpoint; `true` if the file was created (its name needs a directory sync).
pub(crate) async fn write<D: SegmentDir>(dir: &D, m: &Manifest) -> std::io::Result<bool> {
    write_small_file(dir, FILE, &encode(m)).await
}

/// The checkpoint, `None` when missing; a damaged one is reported and ignored.
pub(crate) async fn read<D: SegmentDir>(dir: &D) -> Option<Manifest> {
    match read_small_file(dir, FILE).await {
        Ok(Some(b)) => match decode(&b) {
            Ok(m) => Some(m),
            Err(why) => {
                tracing::warn!(file = FILE, %why, "ignoring a damaged segment checkpoint");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(file = FILE, error = %e, "ignoring an unreadable segment checkpoint");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let m = Manifest {
            durable_end: 77,
            segments: vec![
                ManifestSegment {
                    base_offset: 0,
                    term: 1,
                    size: 16_000,
                    next_offset: 40,
                    max_timestamp: 1_700_000_000_000,
                    first_timestamp: 1_600_000_000_000,
                },
                ManifestSegment {
                    base_offset: 40,
                    term: 2,
                    size: 9,
                    next_offset: 41,
                    max_timestamp: -1,
                    first_timestamp: -1,
                },
            ],
            active: None,
        };
        let mut b = encode(&m);
        assert_eq!(decode(&b).unwrap(), m);
        b.resize(4096, 0);
        assert_eq!(decode(&b).unwrap(), m);
        for i in [0, 5, 10, 30, 90] {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        assert!(decode(&b[..50]).is_err());
        // With the active segment's prefix.
        let mut index = SegmentIndex::default();
        index.note_batch(0, 0, -1, 4096);
        index.note_batch(9, 5000, 77, 4096);
        let with = Manifest {
            active: Some(ActivePrefix {
                term: 3,
                index,
                meta: IndexMeta {
                    base_offset: 41,
                    next_offset: 60,
                    size: 6000,
                    complete: false,
                    max_timestamp: 80,
                    first_timestamp: 5,
                    last_batch: Some(super::super::index::LastBatch {
                        base_offset: 50,
                        pos: 5000,
                        len: 1000,
                        crc: 9,
                    }),
                },
            }),
            ..m
        };
        let b = encode(&with);
        assert_eq!(decode(&b).unwrap(), with);
        let n = b.len();
        for i in [n - 5, n - 40, n - 100] {
            let mut bad = b.clone();
            bad[i] ^= 0x01;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
    }
}
