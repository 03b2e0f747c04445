//! Provides compression utilities for encoding records.
//!
//! This module has implementations of gzip, Snappy, as well as a noop compression format that
//! allows encoding and decoding records into a [`Record`](crate::records::Record).

use crate::protocol::buf::{ByteBuf, ByteBufMut};
use anyhow::Result;

#[cfg(feature = "gzip")]
mod gzip;
#[cfg(feature = "lz4")]
mod lz4;
mod none;
#[cfg(feature = "snappy")]
mod snappy;
#[cfg(feature = "zstd")]
mod zstd;

#[cfg(feature = "gzip")]
pub use gzip::Gzip;
#[cfg(feature = "lz4")]
pub use lz4::Lz4;
pub use none::None;
#[cfg(feature = "snappy")]
pub use snappy::Snappy;
#[cfg(feature = "zstd")]
pub use zstd::Zstd;

// Spate patch: a cap on what one decompression may produce. A small compressed input can
// expand a thousandfold (a 1 MiB gzip of zeros is ~1 GiB), and the broker decompresses on its
// reactor: without a cap one produce request could allocate gigabytes and stall a shard.
thread_local! {
    static OUTPUT_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Runs `f` with every decompression on this thread limited to `limit` output bytes (Spate
/// patch); past it a decompressor fails with an error saying so.
pub fn with_output_limit<R>(limit: usize, f: impl FnOnce() -> R) -> R {
    let before = OUTPUT_LIMIT.with(|l| l.replace(limit));
    let r = f();
    OUTPUT_LIMIT.with(|l| l.set(before));
    r
}

/// The current thread's decompression output limit (Spate patch).
pub(crate) fn output_limit() -> usize {
    OUTPUT_LIMIT.with(|l| l.get())
}

/// The error of a decompression past [`with_output_limit`]'s limit (Spate patch).
pub(crate) fn over_limit(limit: usize) -> std::io::Error {
    std::io::Error::other(format!("decompressed size exceeds the limit of {limit} bytes"))
}

/// A writer into a `BytesMut` that refuses to grow past the output limit (Spate patch).
#[allow(dead_code)]
pub(crate) struct LimitedWriter<'a> {
    pub(crate) buf: &'a mut bytes::BytesMut,
    pub(crate) limit: usize,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            return Err(over_limit(self.limit));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A trait for record compression algorithms.
pub trait Compressor<B: ByteBufMut> {
    /// Target buffer type for compression.
    type BufMut: ByteBufMut;
    /// Compresses into provided [`ByteBufMut`], with records encoded by `F` into `R`.
    fn compress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::BufMut) -> Result<R>;
}

/// A trait for record decompression algorithms.
pub trait Decompressor<B: ByteBuf> {
    /// Target buffer type for decompression.
    type Buf: ByteBuf;
    /// Decompress records from `B` mapped using `F` into `R`.
    fn decompress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::Buf) -> Result<R>;
}
