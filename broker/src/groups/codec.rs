//! The records of `__consumer_offsets`, in Apache Kafka's own format so its tools can read
//! the topic: keys v1 (offset commit) and v2 (group metadata), values OffsetCommitValue v3
//! and GroupMetadataValue v3. A record with a null value is a tombstone.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Key version of an offset commit (v0 is the same layout).
const KEY_OFFSET_COMMIT: i16 = 1;
/// Key version of a group's metadata.
const KEY_GROUP_METADATA: i16 = 2;
const OFFSET_VALUE_VERSION: i16 = 3;
const GROUP_VALUE_VERSION: i16 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's chosen protocol.
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("record ends early while reading {0}")]
    Short(&'static str),
    #[error("unknown {what} version {version}")]
    Version { what: &'static str, version: i16 },
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
}

fn put_str(b: &mut BytesMut, s: &str) {
    b.put_i16(s.len() as i16);
    b.put_slice(s.as_bytes());
}

fn put_opt_str(b: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(b, s),
        None => b.put_i16(-1),
    }
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_i32(v.len() as i32);
    b.put_slice(v);
}

fn need(buf: &Bytes, n: usize, what: &'static str) -> Result<(), CodecError> {
    if buf.remaining() < n {
        Err(CodecError::Short(what))
    } else {
        Ok(())
    }
}

fn get_i16(buf: &mut Bytes, what: &'static str) -> Result<i16, CodecError> {
    need(buf, 2, what)?;
    Ok(buf.get_i16())
}

fn get_i32(buf: &mut Bytes, what: &'static str) -> Result<i32, CodecError> {
    need(buf, 4, what)?;
    Ok(buf.get_i32())
}

fn get_i64(buf: &mut Bytes, what: &'static str) -> Result<i64, CodecError> {
    need(buf, 8, what)?;
    Ok(buf.get_i64())
}

fn get_opt_str(buf: &mut Bytes, what: &'static str) -> Result<Option<String>, CodecError> {
    let len = get_i16(buf, what)?;
    if len < 0 {
        return Ok(None);
    }
    need(buf, len as usize, what)?;
    let raw = buf.split_to(len as usize);
    String::from_utf8(raw.to_vec())
        .map(Some)
        .map_err(|_| CodecError::Utf8(what))
}

fn get_str(buf: &mut Bytes, what: &'static str) -> Result<String, CodecError> {
    Ok(get_opt_str(buf, what)?.unwrap_or_default())
}

fn get_bytes(buf: &mut Bytes, what: &'static str) -> Result<Bytes, CodecError> {
    let len = get_i32(buf, what)?;
    if len < 0 {
        return Ok(Bytes::new());
    }
    need(buf, len as usize, what)?;
    Ok(buf.split_to(len as usize))
}

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. } | RecordKey::Group { group } => group,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64);
        match self {
            RecordKey::Offset {
                group,
                topic,
                partition,
            } => {
                b.put_i16(KEY_OFFSET_COMMIT);
                put_str(&mut b, group);
                put_str(&mut b, topic);
                b.put_i32(*partition);
            }
            RecordKey::Group { group } => {
                b.put_i16(KEY_GROUP_METADATA);
                put_str(&mut b, group);
            }
        }
        b.freeze()
    }

    pub fn decode(mut buf: Bytes) -> Result<RecordKey, CodecError> {
        match get_i16(&mut buf, "key version")? {
            0 | 1 => Ok(RecordKey::Offset {
                group: get_str(&mut buf, "group")?,
                topic: get_str(&mut buf, "topic")?,
                partition: get_i32(&mut buf, "partition")?,
            }),
            2 => Ok(RecordKey::Group {
                group: get_str(&mut buf, "group")?,
            }),
            version => Err(CodecError::Version {
                what: "key",
                version,
            }),
        }
    }
}

impl OffsetValue {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32 + self.metadata.len());
        b.put_i16(OFFSET_VALUE_VERSION);
        b.put_i64(self.offset);
        b.put_i32(self.leader_epoch);
        put_str(&mut b, &self.metadata);
        b.put_i64(self.commit_timestamp);
        b.freeze()
    }

    /// Reads versions 0-3 (v1 carries an expire timestamp, v2 neither it nor an epoch).
    pub fn decode(mut buf: Bytes) -> Result<OffsetValue, CodecError> {
        let version = get_i16(&mut buf, "offset value version")?;
        if !(0..=3).contains(&version) {
            return Err(CodecError::Version {
                what: "offset value",
                version,
            });
        }
        let offset = get_i64(&mut buf, "offset")?;
        let leader_epoch = if version >= 3 {
            get_i32(&mut buf, "leader epoch")?
        } else {
            -1
        };
        let metadata = get_str(&mut buf, "metadata")?;
        let commit_timestamp = get_i64(&mut buf, "commit timestamp")?;
        Ok(OffsetValue {
            offset,
            leader_epoch,
            metadata,
            commit_timestamp,
        })
    }
}

impl GroupValue {
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(128);
        b.put_i16(GROUP_VALUE_VERSION);
        put_str(&mut b, &self.protocol_type);
        b.put_i32(self.generation);
        put_opt_str(&mut b, self.protocol.as_deref());
        put_opt_str(&mut b, self.leader.as_deref());
        b.put_i64(self.state_timestamp);
        b.put_i32(self.members.len() as i32);
        for m in &self.members {
            put_str(&mut b, &m.member_id);
            put_opt_str(&mut b, m.group_instance_id.as_deref());
            put_str(&mut b, &m.client_id);
            put_str(&mut b, &m.client_host);
            b.put_i32(m.rebalance_timeout_ms);
            b.put_i32(m.session_timeout_ms);
            put_bytes(&mut b, &m.subscription);
            put_bytes(&mut b, &m.assignment);
        }
        b.freeze()
    }

    /// Reads versions 0-3.
    pub fn decode(mut buf: Bytes) -> Result<GroupValue, CodecError> {
        let version = get_i16(&mut buf, "group value version")?;
        if !(0..=3).contains(&version) {
            return Err(CodecError::Version {
                what: "group value",
                version,
            });
        }
        let protocol_type = get_str(&mut buf, "protocol type")?;
        let generation = get_i32(&mut buf, "generation")?;
        let protocol = get_opt_str(&mut buf, "protocol")?;
        let leader = get_opt_str(&mut buf, "leader")?;
        let state_timestamp = if version >= 2 {
            get_i64(&mut buf, "state timestamp")?
        } else {
            -1
        };
        let n = get_i32(&mut buf, "member count")?.max(0) as usize;
        let mut members = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let member_id = get_str(&mut buf, "member id")?;
            let group_instance_id = if version >= 3 {
                get_opt_str(&mut buf, "group instance id")?
            } else {
                None
            };
            let client_id = get_str(&mut buf, "client id")?;
            let client_host = get_str(&mut buf, "client host")?;
            let rebalance_timeout_ms = if version >= 1 {
                get_i32(&mut buf, "rebalance timeout")?
            } else {
                0
            };
            let session_timeout_ms = get_i32(&mut buf, "session timeout")?;
            let rebalance_timeout_ms = if version >= 1 {
                rebalance_timeout_ms
            } else {
                session_timeout_ms
            };
            members.push(MemberValue {
                member_id,
                group_instance_id,
                client_id,
                client_host,
                rebalance_timeout_ms,
                session_timeout_ms,
                subscription: get_bytes(&mut buf, "subscription")?,
                assignment: get_bytes(&mut buf, "assignment")?,
            });
        }
        Ok(GroupValue {
            protocol_type,
            generation,
            protocol,
            leader,
            state_timestamp,
            members,
        })
    }
}

/// The topics of a "consumer" protocol subscription (ConsumerProtocolSubscription, any
/// version: it starts with a version and the topic array).
pub fn subscribed_topics(mut metadata: Bytes) -> Option<Vec<String>> {
    let _version = get_i16(&mut metadata, "subscription version").ok()?;
    let n = get_i32(&mut metadata, "topic count").ok()?;
    if n < 0 || n as usize > metadata.remaining() / 2 {
        return None;
    }
    (0..n)
        .map(|_| get_str(&mut metadata, "topic").ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_match_kafkas_layout() {
        let k = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 7,
        };
        let enc = k.encode();
        assert_eq!(&enc[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 7]);
        assert_eq!(RecordKey::decode(enc).unwrap(), k);
        let g = RecordKey::Group {
            group: "grp".into(),
        };
        assert_eq!(RecordKey::decode(g.encode()).unwrap(), g);
        assert_eq!(
            RecordKey::decode(Bytes::from_static(&[0, 9, 0, 0])),
            Err(CodecError::Version {
                what: "key",
                version: 9
            })
        );
        assert_eq!(
            RecordKey::decode(Bytes::from_static(&[0, 1, 0, 5, b'a'])),
            Err(CodecError::Short("group"))
        );
    }

    #[test]
    fn values_round_trip() {
        let o = OffsetValue {
            offset: 42,
            leader_epoch: 3,
            metadata: "m".into(),
            commit_timestamp: 1_700_000_000_000,
        };
        assert_eq!(OffsetValue::decode(o.encode()).unwrap(), o);
        let g = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            state_timestamp: 9,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(GroupValue::decode(g.encode()).unwrap(), g);
        let mut truncated = g.encode();
        truncated.truncate(truncated.len() - 2);
        assert!(GroupValue::decode(truncated).is_err());
    }

    #[test]
    fn subscription_topics() {
        let mut b = BytesMut::new();
        b.put_i16(3);
        b.put_i32(2);
        put_str(&mut b, "a");
        put_str(&mut b, "bb");
        b.put_i32(-1); // user data
        assert_eq!(
            subscribed_topics(b.freeze()),
            Some(vec!["a".to_string(), "bb".to_string()])
        );
        assert_eq!(
            subscribed_topics(Bytes::from_static(&[0, 1, 0x7f, 0, 0, 0])),
            None
        );
    }
}
