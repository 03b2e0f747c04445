//! Which partition a produced record goes to: Kafka's default partitioner for keyed records
//! (murmur2 of the key, made positive, modulo the partition count) and round-robin for
//! records without a key.

/// Kafka's `Utils.murmur2` (seed 0x9747b28c), bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's producer picks for `key` among `partitions` partitions.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Spreads keyless records over partitions one record at a time.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: u64,
}

impl RoundRobin {
    pub fn next(&mut self, partitions: i32) -> i32 {
        assert!(partitions > 0, "a topic has at least one partition");
        let p = (self.next % partitions as u64) as i32;
        self.next += 1;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's own `UtilsTest.testMurmur2`, plus ones computed with Kafka 4.1's
    /// `Utils.murmur2` and `Utils.toPositive(h) % n`.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("", 275_646_681),
            ("key-1", 193_331_640),
            ("user-42", 1_459_644_460),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), *want, "murmur2({key:?})");
        }
    }

    #[test]
    fn keyed_partitions_match_kafkas_default_partitioner() {
        let cases: &[(&str, i32, i32)] = &[
            ("foobar", 3, 0),
            ("foobar", 12, 6),
            ("a-little-bit-long-string", 3, 2),
            ("a-little-bit-longer-string", 12, 11),
            ("abc", 12, 3),
            ("", 12, 9),
            ("user-42", 3, 1),
            ("user-42", 12, 4),
        ];
        for (key, n, want) in cases {
            assert_eq!(
                partition_for_key(key.as_bytes(), *n),
                *want,
                "{key:?} over {n}"
            );
        }
    }

    #[test]
    fn round_robin_cycles() {
        let mut rr = RoundRobin::default();
        let got: Vec<i32> = (0..7).map(|_| rr.next(3)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }
}
