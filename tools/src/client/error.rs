//! Kafka error codes as operators read them: Kafka's own constant names
//! (`UNKNOWN_TOPIC_OR_PARTITION`) with the broker's message, or a short default one.

use kafka_protocol::error::ResponseError;

/// A non-zero Kafka error code from a response, with the broker's message when it sent one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", self.name(), self.message())]
pub struct KafkaError {
    pub code: i16,
    /// What the broker said (`error_message` fields); `None` when the response had none.
    pub broker_message: Option<String>,
}

impl KafkaError {
    /// `None` for code 0 (no error).
    pub fn from_code(code: i16, broker_message: Option<&str>) -> Option<KafkaError> {
        (code != 0).then(|| KafkaError {
            code,
            broker_message: broker_message.filter(|m| !m.is_empty()).map(str::to_string),
        })
    }

    /// Kafka's constant name, as its Java `Errors` enum spells it.
    pub fn name(&self) -> String {
        error_name(self.code)
    }

    /// The broker's message, else a default for the codes operators commonly meet.
    pub fn message(&self) -> String {
        match &self.broker_message {
            Some(m) => m.clone(),
            None => default_message(self.code).to_string(),
        }
    }

    /// Errors a client retries after refreshing metadata or backing off.
    pub fn is_retriable(&self) -> bool {
        ResponseError::try_from_code(self.code).is_some_and(|e| e.is_retriable())
    }

    pub fn is(&self, e: ResponseError) -> bool {
        self.code == e.code()
    }
}

/// `UnknownTopicOrPartition` (the codec's variant name) → `UNKNOWN_TOPIC_OR_PARTITION`.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".to_string(),
        Some(ResponseError::Unknown(c)) => format!("UNKNOWN_ERROR_CODE_{c}"),
        Some(e) => {
            let camel = format!("{e}");
            let mut out = String::with_capacity(camel.len() + 8);
            for (i, ch) in camel.chars().enumerate() {
                if ch.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(ch.to_ascii_uppercase());
            }
            out
        }
    }
}

/// Kafka's descriptions (from its `Errors` enum) for the codes an operator typically sees
/// without a broker message.
fn default_message(code: i16) -> &'static str {
    match code {
        -1 => "The server experienced an unexpected error when processing the request.",
        1 => "The requested offset is not within the range of offsets maintained by the server.",
        3 => "This server does not host this topic-partition.",
        5 => "There is no leader for this topic-partition as we are in the middle of a leadership election.",
        6 => "This server is not the leader or a follower for this partition.",
        7 => "The request timed out.",
        10 => "The request included a message larger than the max message size the server will accept.",
        15 => "The coordinator is not available.",
        16 => "This is not the correct coordinator.",
        17 => "The request attempted to perform an operation on an invalid topic.",
        22 => "Specified group generation id is not valid.",
        25 => "The coordinator is not aware of this member.",
        27 => "The group is rebalancing, so a rejoin is needed.",
        35 => "The version of API is not supported.",
        36 => "Topic with this name already exists.",
        37 => "Number of partitions is below 1.",
        38 => "Replication factor is below 1 or larger than the number of available brokers.",
        40 => "Configuration is invalid.",
        42 => "The request was malformed or sent to an incompatible broker.",
        68 => "The group is not empty.",
        69 => "The group id does not exist.",
        76 => "The requesting client does not support the compression type of given partition.",
        _ => "(no message from the broker)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kafkas_constants() {
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(17), "INVALID_TOPIC_EXCEPTION");
        assert_eq!(error_name(36), "TOPIC_ALREADY_EXISTS");
        assert_eq!(error_name(40), "INVALID_CONFIG");
        assert_eq!(error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(error_name(9999), "UNKNOWN_ERROR_CODE_9999");
    }

    #[test]
    fn display_prefers_the_broker_message() {
        let e = KafkaError::from_code(40, Some("Unknown topic config name: x")).unwrap();
        assert_eq!(
            e.to_string(),
            "INVALID_CONFIG: Unknown topic config name: x"
        );
        let e = KafkaError::from_code(36, Some("")).unwrap();
        assert_eq!(
            e.to_string(),
            "TOPIC_ALREADY_EXISTS: Topic with this name already exists."
        );
        assert!(KafkaError::from_code(0, Some("x")).is_none());
    }
}
