//! Request headers and response framing.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The first three fields of every request header, read at fixed offsets without decoding.
///
/// This is what the broker can still answer from when the rest of the request is too new (an
/// ApiVersions request of a version we do not know) or unparseable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RawHeader {
    /// Peeks the fixed prefix of a request frame; `None` when the frame is shorter than 8 bytes.
    pub fn peek(frame: &[u8]) -> Option<RawHeader> {
        if frame.len() < 8 {
            return None;
        }
        Some(RawHeader {
            api_key: i16::from_be_bytes([frame[0], frame[1]]),
            api_version: i16::from_be_bytes([frame[2], frame[3]]),
            correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        })
    }
}

/// A request or response that kafka-protocol could not decode or encode; the text says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct WireError(pub String);

/// Decodes the request header of `frame` (advancing it to the body).
pub fn decode_request_header(
    frame: &mut Bytes,
    key: ApiKey,
    version: i16,
) -> Result<RequestHeader, WireError> {
    RequestHeader::decode(frame, key.request_header_version(version))
        .map_err(|e| WireError(format!("request header of {key:?} v{version}: {e}")))
}

/// Encodes a whole response frame: size prefix, response header, body.
pub fn encode_response<M: Encodable>(
    correlation_id: i32,
    key: ApiKey,
    version: i16,
    body: &M,
) -> Result<Bytes, WireError> {
    let header_version = key.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let size = header
        .compute_size(header_version)
        .and_then(|h| body.compute_size(version).map(|b| h + b))
        .map_err(|e| WireError(format!("sizing {key:?} v{version} response: {e}")))?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(size as i32);
    header
        .encode(&mut buf, header_version)
        .and_then(|_| body.encode(&mut buf, version))
        .map_err(|e| WireError(format!("encoding {key:?} v{version} response: {e}")))?;
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};
    use kafka_protocol::protocol::{encode_request_header_into_buffer, StrBytes};

    #[test]
    fn peek_needs_eight_bytes() {
        assert_eq!(RawHeader::peek(&[0, 18, 0, 3, 0, 0, 0]), None);
        assert_eq!(
            RawHeader::peek(&[0, 18, 0, 3, 0, 0, 1, 2, 99]),
            Some(RawHeader {
                api_key: 18,
                api_version: 3,
                correlation_id: 258
            })
        );
    }

    #[test]
    fn flexible_request_header_round_trips() {
        let header = RequestHeader::default()
            .with_request_api_key(18)
            .with_request_api_version(3)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("t")));
        let mut buf = BytesMut::new();
        encode_request_header_into_buffer(&mut buf, &header).unwrap();
        ApiVersionsRequest::default().encode(&mut buf, 3).unwrap();
        let mut frame = buf.freeze();
        let got = decode_request_header(&mut frame, ApiKey::ApiVersions, 3).unwrap();
        assert_eq!(got.correlation_id, 7);
        assert_eq!(got.client_id.as_deref(), Some("t"));
        ApiVersionsRequest::decode(&mut frame, 3).unwrap();
    }

    #[test]
    fn response_frame_has_size_prefix_and_v0_header_for_api_versions() {
        let frame =
            encode_response(9, ApiKey::ApiVersions, 3, &ApiVersionsResponse::default()).unwrap();
        let size = i32::from_be_bytes(frame[0..4].try_into().unwrap()) as usize;
        assert_eq!(size, frame.len() - 4);
        // ApiVersions responses always use header v0: the correlation id, then the body.
        assert_eq!(i32::from_be_bytes(frame[4..8].try_into().unwrap()), 9);
        assert_eq!(i16::from_be_bytes(frame[8..10].try_into().unwrap()), 0);
    }
}
