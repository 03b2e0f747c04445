//! Length-prefixed Kafka frames: `int32 size` followed by `size` bytes.

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt};

/// The first allocation for a frame body. Frames up to this size (nearly every request) are
/// read into one exact allocation; larger ones double from here as their bytes arrive.
pub const FRAME_GROWTH_STEP_BYTES: usize = 1 << 20;

/// Why a frame could not be read. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection between frames (the normal end).
    #[error("connection closed by peer")]
    Closed,
    /// The peer closed the connection inside a frame.
    #[error("truncated frame: expected {expected} bytes, connection closed after {got}")]
    Truncated { expected: usize, got: usize },
    /// The size prefix is negative or larger than the configured maximum.
    #[error("invalid frame size {size} (allowed 0..={max})")]
    InvalidSize { size: i32, max: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame body (without its size prefix).
///
/// The body is read straight into one allocation of exactly `size` bytes and frozen, so the
/// record batches decoded from it later are zero-copy slices of this buffer.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: usize,
) -> Result<Bytes, FrameError> {
    let mut size_buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(&mut size_buf[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated { expected: 4, got }
            });
        }
        got += n;
    }
    let size = i32::from_be_bytes(size_buf);
    if size < 0 || size as usize > frame_bytes_max {
        return Err(FrameError::InvalidSize {
            size,
            max: frame_bytes_max,
        });
    }
    let size = size as usize;
    // Grow the buffer as bytes arrive instead of trusting the size prefix: a peer that
    // announces a huge frame and sends a few bytes costs little. Buffers come from
    // `BytesMut::zeroed` (calloc): pages nobody writes stay unmapped, so memory follows the bytes
    // actually received (at most twice that while growing).
    let mut body = BytesMut::zeroed(size.min(FRAME_GROWTH_STEP_BYTES));
    let mut filled = 0;
    while filled < size {
        if filled == body.len() {
            let mut bigger = BytesMut::zeroed((body.len() * 2).min(size));
            bigger[..filled].copy_from_slice(&body[..filled]);
            body = bigger;
        }
        let n = reader.read(&mut body[filled..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated {
                expected: size,
                got: filled,
            });
        }
        filled += n;
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    fn read(input: &[u8], max: usize) -> Result<Bytes, FrameError> {
        let mut cursor = futures_lite::io::Cursor::new(input.to_vec());
        block_on(read_frame(&mut cursor, max))
    }

    #[test]
    fn reads_a_whole_frame() {
        let body = read(&[0, 0, 0, 3, b'a', b'b', b'c', 9], 100).unwrap();
        assert_eq!(&body[..], b"abc");
    }

    #[test]
    fn empty_input_is_a_clean_close() {
        assert!(matches!(read(&[], 100), Err(FrameError::Closed)));
    }

    #[test]
    fn truncated_size_and_body_are_reported() {
        assert!(matches!(
            read(&[0, 0], 100),
            Err(FrameError::Truncated {
                expected: 4,
                got: 2
            })
        ));
        assert!(matches!(
            read(&[0, 0, 0, 5, 1, 2], 100),
            Err(FrameError::Truncated {
                expected: 5,
                got: 2
            })
        ));
    }

    #[test]
    fn frames_larger_than_one_growth_step_arrive_whole() {
        let n = FRAME_GROWTH_STEP_BYTES * 3 + 17;
        let mut input = (n as i32).to_be_bytes().to_vec();
        input.extend((0..n).map(|i| (i % 251) as u8));
        let body = read(&input, n).unwrap();
        assert_eq!(body.len(), n);
        assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    }

    #[test]
    fn oversized_and_negative_sizes_are_rejected_before_allocating() {
        assert!(matches!(
            read(&[0x7f, 0xff, 0xff, 0xff], 1024),
            Err(FrameError::InvalidSize { .. })
        ));
        assert!(matches!(
            read(&[0xff, 0xff, 0xff, 0xff], 1024),
            Err(FrameError::InvalidSize { size: -1, .. })
        ));
    }
}
