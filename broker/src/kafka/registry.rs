//! The implemented APIs and versions: the one table ApiVersions is generated from.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

/// `(api, min, max)`. A version is listed only when its handler serves it completely.
pub static APIS: &[(ApiKey, i16, i16)] = &[
    // v0-v2 advertised but answered UNSUPPORTED_VERSION (KAFKA-18659; see handlers::produce).
    (ApiKey::Produce, 0, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ListOffsets, 1, 10),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
];

pub fn versions(key: ApiKey) -> Option<VersionRange> {
    APIS.iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| VersionRange {
            min: *min,
            max: *max,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_version_is_one_kafka_protocol_can_decode() {
        for (key, min, max) in APIS {
            let codec = key.valid_versions();
            // Produce v0-v2 are answered by hand (handlers::produce::legacy_unsupported).
            let min = if *key == ApiKey::Produce { &3 } else { min };
            assert!(
                codec.min <= *min && *max <= codec.max,
                "{key:?} {min}..={max} outside the codec's {codec}"
            );
        }
    }
}
