//! The node-to-node envelope: everything one driver sends one peer node in one flush.
//!
//! Heartbeats and heartbeat responses of *all* groups between the two nodes travel as compact
//! fixed-size items (group, term, commit) instead of one protobuf `Message` each; that is the
//! per-node-pair heartbeat coalescing. Other Raft messages (appends, votes, snapshots) are
//! carried as raft-rs protobuf bytes, tagged with their group.
//!
//! Layout (little endian):
//!
//! ```text
//! magic u16 = 0x5352 ("SR"), version u8 = 1,
//! from u64, to u64, incarnation u64,
//! heartbeat count u32,          { group u64, term u64, commit u64, flags u8 }*
//! heartbeat-response count u32, { group u64, term u64, commit u64 }*
//! message count u32,            { group u64, len u32, protobuf bytes }*
//! checksum u64                  (FNV-1a 64 of every preceding byte)
//! ```
//!
//! Decoding never trusts a count or length: each is checked against the bytes that remain
//! before anything is allocated, and a bad checksum, trailing bytes or a short buffer reject
//! the whole envelope.

use bytes::Bytes;

use crate::types::{GroupId, NodeId};

const MAGIC: u16 = 0x5352;
const VERSION: u8 = 1;
const HEADER_LEN: usize = 2 + 1 + 8 + 8 + 8;
const HEARTBEAT_LEN: usize = 8 + 8 + 8 + 1;
const HEARTBEAT_RESPONSE_LEN: usize = 8 + 8 + 8;
const MESSAGE_MIN_LEN: usize = 8 + 4;
const CHECKSUM_LEN: usize = 8;

/// Heartbeat flag: the leader stops ticking this group after this heartbeat (quiescence).
const FLAG_QUIESCE: u8 = 1;

/// Why an envelope (or a value inside it) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ended before a field did.
    #[error("truncated envelope")]
    Truncated,
    /// Not an envelope of ours.
    #[error("bad magic {0:#06x}")]
    BadMagic(u16),
    /// An envelope version we do not speak.
    #[error("unsupported envelope version {0}")]
    BadVersion(u8),
    /// The checksum does not match the content.
    #[error("checksum mismatch")]
    BadChecksum,
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
    /// A count or length larger than the bytes that remain.
    #[error("count {0} exceeds the remaining bytes")]
    BadCount(usize),
    /// Unknown flag bits.
    #[error("unknown flags {0:#04x}")]
    BadFlags(u8),
    /// The envelope names a different destination node (or claims to come from the receiver).
    #[error("envelope for node {to} delivered to node {me}")]
    Misrouted {
        /// Destination named in the envelope.
        to: NodeId,
        /// The node that received it.
        me: NodeId,
    },
    /// A node id of zero.
    #[error("node id 0")]
    ZeroNode,
}

/// A coalesced heartbeat for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The group.
    pub group: GroupId,
    /// The leader's term.
    pub term: u64,
    /// The commit index the follower may advance to.
    pub commit: u64,
    /// The leader stops ticking the group after this one (see `Driver` docs: quiescence).
    pub quiesce: bool,
}

/// A coalesced heartbeat response for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    /// The group.
    pub group: GroupId,
    /// The follower's term.
    pub term: u64,
    /// The follower's commit index.
    pub commit: u64,
}

/// Everything one node sends another in one flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Sender node.
    pub from: NodeId,
    /// Destination node.
    pub to: NodeId,
    /// The sender's incarnation (changes on every restart); a change tells the receiver that
    /// the sender lost its volatile state, so groups quiesced with it must wake.
    pub incarnation: u64,
    /// Coalesced heartbeats.
    pub heartbeats: Vec<Heartbeat>,
    /// Coalesced heartbeat responses.
    pub heartbeat_responses: Vec<HeartbeatResponse>,
    /// Other Raft messages: group and protobuf-encoded raft-rs `Message`.
    pub messages: Vec<(GroupId, Bytes)>,
}

impl Envelope {
    /// Whether there is nothing but the header (a node-level liveness ping).
    pub fn is_empty(&self) -> bool {
        self.heartbeats.is_empty()
            && self.heartbeat_responses.is_empty()
            && self.messages.is_empty()
    }

    /// Serializes the envelope.
    pub fn encode(&self) -> Bytes {
        let body: usize = self
            .messages
            .iter()
            .map(|(_, m)| MESSAGE_MIN_LEN + m.len())
            .sum();
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + 12
                + self.heartbeats.len() * HEARTBEAT_LEN
                + self.heartbeat_responses.len() * HEARTBEAT_RESPONSE_LEN
                + body
                + CHECKSUM_LEN,
        );
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.push(VERSION);
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.extend_from_slice(&(self.heartbeats.len() as u32).to_le_bytes());
        for hb in &self.heartbeats {
            out.extend_from_slice(&hb.group.to_le_bytes());
            out.extend_from_slice(&hb.term.to_le_bytes());
            out.extend_from_slice(&hb.commit.to_le_bytes());
            out.push(if hb.quiesce { FLAG_QUIESCE } else { 0 });
        }
        out.extend_from_slice(&(self.heartbeat_responses.len() as u32).to_le_bytes());
        for r in &self.heartbeat_responses {
            out.extend_from_slice(&r.group.to_le_bytes());
            out.extend_from_slice(&r.term.to_le_bytes());
            out.extend_from_slice(&r.commit.to_le_bytes());
        }
        out.extend_from_slice(&(self.messages.len() as u32).to_le_bytes());
        for (group, m) in &self.messages {
            out.extend_from_slice(&group.to_le_bytes());
            out.extend_from_slice(&(m.len() as u32).to_le_bytes());
            out.extend_from_slice(m);
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Bytes::from(out)
    }

    /// Parses an envelope; message bodies stay zero-copy slices of `bytes`.
    pub fn decode(bytes: &Bytes) -> Result<Envelope, WireError> {
        if bytes.len() < HEADER_LEN + 12 + CHECKSUM_LEN {
            return Err(WireError::Truncated);
        }
        let (content, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        let mut sum_bytes = [0u8; 8];
        sum_bytes.copy_from_slice(sum);
        if fnv1a(content) != u64::from_le_bytes(sum_bytes) {
            return Err(WireError::BadChecksum);
        }
        let mut r = Reader::new(bytes.slice(..content.len()));
        let magic = r.u16()?;
        if magic != MAGIC {
            return Err(WireError::BadMagic(magic));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let from = r.u64()?;
        let to = r.u64()?;
        if from == 0 || to == 0 {
            return Err(WireError::ZeroNode);
        }
        let incarnation = r.u64()?;
        let n = r.count(HEARTBEAT_LEN)?;
        let mut heartbeats = Vec::with_capacity(n);
        for _ in 0..n {
            let group = r.u64()?;
            let term = r.u64()?;
            let commit = r.u64()?;
            let flags = r.u8()?;
            if flags & !FLAG_QUIESCE != 0 {
                return Err(WireError::BadFlags(flags));
            }
            heartbeats.push(Heartbeat {
                group,
                term,
                commit,
                quiesce: flags & FLAG_QUIESCE != 0,
            });
        }
        let n = r.count(HEARTBEAT_RESPONSE_LEN)?;
        let mut heartbeat_responses = Vec::with_capacity(n);
        for _ in 0..n {
            heartbeat_responses.push(HeartbeatResponse {
                group: r.u64()?,
                term: r.u64()?,
                commit: r.u64()?,
            });
        }
        let n = r.count(MESSAGE_MIN_LEN)?;
        let mut messages = Vec::with_capacity(n);
        for _ in 0..n {
            let group = r.u64()?;
            let len = r.u32()? as usize;
            messages.push((group, r.bytes(len)?));
        }
        r.finish()?;
        Ok(Envelope {
            from,
            to,
            incarnation,
            heartbeats,
            heartbeat_responses,
            messages,
        })
    }
}

/// The kind of a Raft message, for inspection (tests, tracing, tools).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// AppendEntries (Raft §5.3).
    Append,
    /// AppendEntries result.
    AppendResponse,
    /// RequestVote (Raft §5.2).
    RequestVote,
    /// RequestVote result.
    RequestVoteResponse,
    /// Pre-vote request (thesis §9.6); carries the *prospective* term.
    RequestPreVote,
    /// Pre-vote result.
    RequestPreVoteResponse,
    /// Heartbeat (coalesced item or, with a context, a full message).
    Heartbeat,
    /// Heartbeat result.
    HeartbeatResponse,
    /// InstallSnapshot (Raft §7).
    Snapshot,
    /// Leadership transfer: campaign now (thesis §3.10).
    TimeoutNow,
    /// Anything else (refused by the receiver).
    Other,
}

/// One Raft message of an envelope, summarised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageSummary {
    /// The group.
    pub group: GroupId,
    /// The kind.
    pub kind: MessageKind,
    /// Sender node.
    pub from: NodeId,
    /// Destination node.
    pub to: NodeId,
    /// Term carried.
    pub term: u64,
    /// Index field (append: previous index; append response: matched or rejected index;
    /// snapshot: snapshot index).
    pub index: u64,
    /// Commit field.
    pub commit: u64,
    /// Whether it is a rejection.
    pub reject: bool,
    /// Number of entries carried.
    pub entries: usize,
}

/// Summarises every Raft message of an encoded envelope (coalesced heartbeats included).
/// Messages that fail to decode are skipped, as the receiver would drop them.
pub fn inspect(bytes: &Bytes) -> Result<Vec<MessageSummary>, WireError> {
    use protobuf::Message as _;
    use raft::eraftpb::{Message, MessageType};

    let env = Envelope::decode(bytes)?;
    let mut out = Vec::new();
    for (group, body) in &env.messages {
        let Ok(m) = Message::parse_from_carllerche_bytes(body) else {
            continue;
        };
        let kind = match m.get_msg_type() {
            MessageType::MsgAppend => MessageKind::Append,
            MessageType::MsgAppendResponse => MessageKind::AppendResponse,
            MessageType::MsgRequestVote => MessageKind::RequestVote,
            MessageType::MsgRequestVoteResponse => MessageKind::RequestVoteResponse,
            MessageType::MsgRequestPreVote => MessageKind::RequestPreVote,
            MessageType::MsgRequestPreVoteResponse => MessageKind::RequestPreVoteResponse,
            MessageType::MsgHeartbeat => MessageKind::Heartbeat,
            MessageType::MsgHeartbeatResponse => MessageKind::HeartbeatResponse,
            MessageType::MsgSnapshot => MessageKind::Snapshot,
            MessageType::MsgTimeoutNow => MessageKind::TimeoutNow,
            _ => MessageKind::Other,
        };
        let index = if kind == MessageKind::Snapshot {
            m.get_snapshot().get_metadata().index
        } else {
            m.index
        };
        out.push(MessageSummary {
            group: *group,
            kind,
            from: m.from,
            to: m.to,
            term: m.term,
            index,
            commit: m.commit,
            reject: m.reject,
            entries: m.get_entries().len(),
        });
    }
    for hb in &env.heartbeats {
        out.push(MessageSummary {
            group: hb.group,
            kind: MessageKind::Heartbeat,
            from: env.from,
            to: env.to,
            term: hb.term,
            index: 0,
            commit: hb.commit,
            reject: false,
            entries: 0,
        });
    }
    for r in &env.heartbeat_responses {
        out.push(MessageSummary {
            group: r.group,
            kind: MessageKind::HeartbeatResponse,
            from: env.from,
            to: env.to,
            term: r.term,
            index: 0,
            commit: r.commit,
            reject: false,
            entries: 0,
        });
    }
    Ok(out)
}

/// FNV-1a, 64 bit: a cheap integrity check against torn or corrupted frames (not a MAC).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A bounds-checked little-endian reader over `Bytes`.
pub(crate) struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        if self.remaining() < N {
            return Err(WireError::Truncated);
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    /// A count of items of at least `item_len` bytes each, checked against what remains.
    fn count(&mut self, item_len: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > self.remaining() / item_len {
            return Err(WireError::BadCount(n));
        }
        Ok(n)
    }

    pub(crate) fn bytes(&mut self, len: usize) -> Result<Bytes, WireError> {
        if len > self.remaining() {
            return Err(WireError::BadCount(len));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            from: 1,
            to: 2,
            incarnation: 7,
            heartbeats: vec![
                Heartbeat {
                    group: 10,
                    term: 3,
                    commit: 99,
                    quiesce: false,
                },
                Heartbeat {
                    group: 11,
                    term: 4,
                    commit: 5,
                    quiesce: true,
                },
            ],
            heartbeat_responses: vec![HeartbeatResponse {
                group: 12,
                term: 3,
                commit: 8,
            }],
            messages: vec![(10, Bytes::from_static(b"abc")), (13, Bytes::new())],
        }
    }

    /// Raft §5 (Figure 2): every field of the RPCs and of the coalesced heartbeats (term,
    /// commit) survives the envelope encoding.
    #[test]
    fn round_trip() {
        let env = sample();
        assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
        let empty = Envelope {
            from: 3,
            to: 4,
            ..Envelope::default()
        };
        assert!(empty.is_empty());
        assert_eq!(Envelope::decode(&empty.encode()).unwrap(), empty);
    }

    /// Raft §5.1 assumes messages may be lost, not forged: a damaged envelope is rejected whole
    /// (checksum), so it is merely lost.
    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(Envelope::decode(&bytes.slice(..len)).is_err(), "len {len}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut v = bytes.to_vec();
                v[i] ^= 1 << bit;
                assert!(
                    Envelope::decode(&Bytes::from(v)).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    /// Raft §5.1 (lost messages only): a malformed count is rejected before allocating.
    #[test]
    fn lying_counts_do_not_allocate() {
        // A header followed by a huge heartbeat count, with a valid checksum.
        let mut v = Vec::new();
        v.extend_from_slice(&MAGIC.to_le_bytes());
        v.push(VERSION);
        v.extend_from_slice(&1u64.to_le_bytes());
        v.extend_from_slice(&2u64.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
        v.extend_from_slice(&[0u8; 8]);
        let sum = fnv1a(&v);
        v.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(
            Envelope::decode(&Bytes::from(v)),
            Err(WireError::BadCount(u32::MAX as usize))
        );
    }
}
