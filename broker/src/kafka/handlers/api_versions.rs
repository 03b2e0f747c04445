//! ApiVersions (key 18), v0–v4: the implemented APIs, generated from the registry.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafka_protocol::ResponseError;
use spate_net::conn::Reply;
use spate_net::header::encode_response;

use crate::kafka::registry::APIS;
use crate::kafka::Ctx;

pub fn response(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            APIS.iter()
                .map(|(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

/// KIP-511 client names: `[a-zA-Z0-9](?:[a-zA-Z0-9\-.]*[a-zA-Z0-9])?`.
fn valid_client_software(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

pub fn handle(ctx: &Ctx, req: ApiVersionsRequest) -> ApiVersionsResponse {
    if ctx.version >= 3
        && !(valid_client_software(&req.client_software_name)
            && valid_client_software(&req.client_software_version))
    {
        return response(ResponseError::InvalidRequest.code());
    }
    response(0)
}

/// The answer to an ApiVersions request of a version we do not speak: a v0 response with
/// UNSUPPORTED_VERSION and our ranges.
pub fn unsupported_version(correlation_id: i32) -> Reply {
    let body = response(ResponseError::UnsupportedVersion.code());
    match encode_response(correlation_id, ApiKey::ApiVersions, 0, &body) {
        Ok(frame) => Reply::Frame(frame),
        Err(e) => Reply::Close(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kip_511_names() {
        assert!(valid_client_software("apache-kafka-java"));
        assert!(valid_client_software("4.1.1"));
        assert!(!valid_client_software(""));
        assert!(!valid_client_software("-x"));
        assert!(!valid_client_software("a b"));
    }

    #[test]
    fn response_lists_exactly_the_registry() {
        let r = response(0);
        assert_eq!(r.api_keys.len(), APIS.len());
        // Not implemented, so not advertised.
        for absent in [
            ApiKey::TxnOffsetCommit,
            ApiKey::ConsumerGroupHeartbeat,
            ApiKey::AddPartitionsToTxn,
        ] {
            assert!(r.api_keys.iter().all(|k| k.api_key != absent as i16));
        }
        let produce = r
            .api_keys
            .iter()
            .find(|k| k.api_key == ApiKey::Produce as i16)
            .unwrap();
        assert_eq!((produce.min_version, produce.max_version), (0, 13));
    }
}
