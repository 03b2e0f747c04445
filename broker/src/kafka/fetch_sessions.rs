//! Incremental fetch sessions (KIP-227), one cache per shard.
//!
//! A consumer's connection lives on one shard, so its sessions do too. A full fetch (epoch 0)
//! opens a session holding the fetched partitions; later fetches (epoch 1, 2, …) send only
//! what changed (new partitions, new offsets, forgotten partitions) and get back only the
//! partitions with news: records, an error, or a moved high watermark / log start offset.
//! Session ids carry the shard id in their low byte, so an id from another shard (after a
//! reconnect) is never mistaken for one of ours.

use std::collections::HashMap;
use std::time::Instant;

use uuid::Uuid;

/// Sessions kept per shard (Kafka's `max.incremental.fetch.session.cache.slots` is 1000 per
/// broker); the least recently used goes when a new one needs room.
pub const SESSIONS_PER_SHARD_MAX: usize = 1000;
/// Partitions one session may hold; a larger full fetch gets no session.
pub const SESSION_PARTITIONS_MAX: usize = 10_000;

/// A topic as the request names it: by name before Fetch v13, by id from v13.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TopicRef {
    Name(String),
    Id(Uuid),
}

/// What the session remembers of one partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionPartition {
    pub fetch_offset: i64,
    pub max_bytes: i32,
    /// Last high watermark / log start offset sent (-2: never sent).
    pub sent_hw: i64,
    pub sent_log_start: i64,
}

impl SessionPartition {
    pub fn new(fetch_offset: i64, max_bytes: i32) -> SessionPartition {
        SessionPartition {
            fetch_offset,
            max_bytes,
            sent_hw: -2,
            sent_log_start: -2,
        }
    }
}

pub struct Session {
    /// Next epoch the client must send.
    pub epoch: i32,
    /// In insertion order, as the response lists them.
    pub partitions: Vec<((TopicRef, i32), SessionPartition)>,
    /// Position of each partition in `partitions` (a session may hold thousands: a linear
    /// search per partition would make every fetch quadratic).
    index: HashMap<(TopicRef, i32), usize>,
    last_used: Instant,
}

impl Session {
    fn new(partitions: Vec<((TopicRef, i32), SessionPartition)>) -> Session {
        let mut s = Session {
            epoch: 1,
            partitions,
            index: HashMap::new(),
            last_used: Instant::now(),
        };
        s.reindex();
        s
    }

    fn reindex(&mut self) {
        self.index = self
            .partitions
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
    }

    pub fn find_mut(&mut self, key: &(TopicRef, i32)) -> Option<&mut SessionPartition> {
        let i = *self.index.get(key)?;
        self.partitions.get_mut(i).map(|(_, p)| p)
    }

    /// Adds or updates a partition from an incremental request.
    pub fn upsert(&mut self, key: (TopicRef, i32), fetch_offset: i64, max_bytes: i32) {
        match self.find_mut(&key) {
            Some(p) => {
                p.fetch_offset = fetch_offset;
                p.max_bytes = max_bytes;
            }
            None => {
                self.index.insert(key.clone(), self.partitions.len());
                self.partitions
                    .push((key, SessionPartition::new(fetch_offset, max_bytes)));
            }
        }
    }

    pub fn forget(&mut self, key: &(TopicRef, i32)) {
        if self.index.remove(key).is_some() {
            self.partitions.retain(|(k, _)| k != key);
            self.reindex();
        }
    }
}

/// Why an incremental fetch cannot use its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    NotFound,
    InvalidEpoch,
}

pub struct FetchSessions {
    shard: usize,
    sessions: HashMap<i32, Session>,
    next: u32,
}

impl FetchSessions {
    pub fn new(shard: usize) -> FetchSessions {
        FetchSessions {
            shard,
            sessions: HashMap::new(),
            next: rand_seed(),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn remove(&mut self, id: i32) {
        self.sessions.remove(&id);
    }

    /// Opens a session for a full fetch; `None` when it is too large to keep.
    pub fn create(&mut self, partitions: Vec<((TopicRef, i32), SessionPartition)>) -> Option<i32> {
        if partitions.len() > SESSION_PARTITIONS_MAX {
            return None;
        }
        if self.sessions.len() >= SESSIONS_PER_SHARD_MAX {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id)?;
            self.sessions.remove(&oldest);
        }
        let id = loop {
            // xorshift: ids are unpredictable enough and never repeat soon.
            self.next ^= self.next << 13;
            self.next ^= self.next >> 17;
            self.next ^= self.next << 5;
            let id = (((self.next & 0x7f_ffff) << 8) | (self.shard as u32 & 0xff)) as i32;
            if id > 0 && !self.sessions.contains_key(&id) {
                break id;
            }
        };
        self.sessions.insert(id, Session::new(partitions));
        Some(id)
    }

    /// A session by id, without an epoch check (to record what a response sent).
    pub fn get_existing(&mut self, id: i32) -> Option<&mut Session> {
        self.sessions.get_mut(&id)
    }

    /// The session of an incremental fetch, checked against the epoch it sends.
    pub fn get(&mut self, id: i32, epoch: i32) -> Result<&mut Session, SessionError> {
        let s = self.sessions.get_mut(&id).ok_or(SessionError::NotFound)?;
        if s.epoch != epoch {
            return Err(SessionError::InvalidEpoch);
        }
        s.last_used = Instant::now();
        Ok(s)
    }
}

fn rand_seed() -> u32 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(1);
    n | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, p: i32) -> (TopicRef, i32) {
        (TopicRef::Name(t.into()), p)
    }

    #[test]
    fn session_lifecycle() {
        let mut c = FetchSessions::new(3);
        let id = c
            .create(vec![(key("a", 0), SessionPartition::new(0, 100))])
            .unwrap();
        assert!(id > 0);
        assert_eq!(id & 0xff, 3, "the shard id is in the low byte");
        assert_eq!(c.get(id, 2).err(), Some(SessionError::InvalidEpoch));
        assert_eq!(c.get(id + 256, 1).err(), Some(SessionError::NotFound));
        let s = c.get(id, 1).unwrap();
        s.upsert(key("a", 1), 5, 100);
        s.upsert(key("a", 0), 7, 100);
        assert_eq!(s.partitions.len(), 2);
        assert_eq!(s.find_mut(&key("a", 0)).unwrap().fetch_offset, 7);
        s.forget(&key("a", 0));
        assert_eq!(s.partitions.len(), 1);
        c.remove(id);
        assert!(c.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let mut c = FetchSessions::new(0);
        for _ in 0..SESSIONS_PER_SHARD_MAX + 10 {
            c.create(vec![]).unwrap();
        }
        assert_eq!(c.len(), SESSIONS_PER_SHARD_MAX);
        let big = (0..SESSION_PARTITIONS_MAX as i32 + 1)
            .map(|p| (key("t", p), SessionPartition::new(0, 1)))
            .collect();
        assert_eq!(c.create(big), None);
    }
}
