//! Every limit of the broker in one place, each with the reason for its value.

/// Shards per node; the mesh has SHARDS_MAX² queues, and 256 cores is beyond any single box
/// we target.
pub const SHARDS_MAX: usize = 256;
/// Kafka's `socket.request.max.bytes` default (100 MiB): the largest request frame.
pub const REQUEST_FRAME_BYTES_DEFAULT: usize = 100 * 1024 * 1024;
/// Upper bound a config may raise the frame limit to (1 GiB).
pub const REQUEST_FRAME_BYTES_MAX: usize = 1 << 30;
/// Requests read ahead per connection; clients pipeline up to 5 (Java's
/// `max.in.flight.requests.per.connection` default), a little slack keeps them all moving.
pub const INFLIGHT_REQUESTS_PER_CONNECTION_DEFAULT: usize = 16;
pub const INFLIGHT_REQUESTS_PER_CONNECTION_MAX: usize = 1024;
/// Partitions one topic may have; bounds one CreateTopics request's work and memory.
pub const PARTITIONS_PER_TOPIC_MAX: i32 = 100_000;
/// Partitions in the whole node (every shard holds the full table).
pub const PARTITIONS_PER_NODE_MAX: usize = 200_000;
/// Replication factor ceiling (Kafka's is i16::MAX; nobody needs more than this).
pub const REPLICATION_FACTOR_MAX: i16 = 16;
/// Kafka's topic-name length limit.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Messages queued per shard-to-shard direction before senders wait.
pub const MESH_QUEUE_MAX: usize = 1024;
/// What the records section of one batch may decompress to. A compressed batch can expand a
/// thousandfold (1 MiB of gzip'd zeros is ~1 GiB) and the broker decompresses on the shard's
/// reactor to validate every record, so without a bound one produce request could allocate
/// gigabytes and stall the shard for seconds. Kafka has no such bound (it streams on one of
/// many handler threads); 64 MiB is 64 times Kafka's default `max.message.bytes` (1 MiB, which
/// limits the compressed size), far above what clients' batching produces (librdkafka's
/// `batch.size` is 1 MB of records, Java's 16 KiB). Past it: INVALID_RECORD.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;
/// Memory one log compaction's key map may take per shard (Kafka's
/// `log.cleaner.dedupe.buffer.size` is 128 MiB for all cleaner threads): 32 MiB at about 48
/// bytes per key (a 16-byte key hash, the offset, the hash table's slack) maps ~700k keys in
/// one pass; a partition with more dirty keys is compacted a prefix at a time.
pub const COMPACTION_MAP_BYTES: usize = 32 << 20;
/// Bytes one key of the compaction map is counted as (see [`COMPACTION_MAP_BYTES`]).
pub const COMPACTION_MAP_BYTES_PER_KEY: usize = 48;
