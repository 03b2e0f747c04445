//! Requests that announce huge element counts must fail to decode with an error, not abort the
//! process by pre-allocating (see net/vendor/README.md).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{MetadataRequest, ProduceRequest};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::RecordBatchDecoder;

#[test]
fn array_length_beyond_the_frame_is_an_error() {
    // Metadata v4 (non-flexible): topics array length i32::MAX, then ten bytes.
    let mut b = BytesMut::new();
    b.put_i32(i32::MAX);
    b.put_slice(&[0u8; 10]);
    let err = MetadataRequest::decode(&mut b.freeze(), 4).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[test]
fn compact_array_length_beyond_the_frame_is_an_error() {
    // Produce v9 (flexible): transactional_id (compact nullable string: 0 = null), acks,
    // timeout, then topics as a compact array with varint length 2^31.
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_i16(1);
    b.put_i32(1000);
    b.put_slice(&[0x80, 0x80, 0x80, 0x80, 0x08]);
    b.put_slice(&[0u8; 8]);
    let err = ProduceRequest::decode(&mut b.freeze(), 9).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[test]
fn record_header_count_beyond_the_batch_is_an_error() {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional: false,
        control: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
        delete_horizon: false,
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .unwrap();
    // The batch holds one record: [len varint][body ... header count 0]. Rebuild it with a
    // header count of i32::MAX (zigzag varint fe ff ff ff 0f), fix the lengths and the CRC.
    let header = &buf[..61];
    let old_len = (buf[61] >> 1) as usize; // zigzag, one byte for a small record
    let body = &buf[62..62 + old_len - 1];
    assert_eq!(
        buf[62 + old_len - 1],
        0,
        "header count of the encoded record"
    );
    let new_len = old_len - 1 + 5;
    let mut out = BytesMut::new();
    out.put_slice(header);
    out.put_u8((new_len << 1) as u8);
    out.put_slice(body);
    out.put_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
    let batch_len = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&batch_len.to_be_bytes());
    let crc = crc32c::crc32c(&out[21..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    let err = RecordBatchDecoder::decode(&mut out.freeze()).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}
