//! Kafka's topic-name rules (`org.apache.kafka.common.internals.Topic`).

use crate::limits::TOPIC_NAME_BYTES_MAX;

/// Checks a topic name; the error is Kafka's INVALID_TOPIC_EXCEPTION message
/// (`Topic name is invalid: …`, as Kafka 4.x words it).
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    let why = if name.is_empty() {
        "the empty string is not allowed".to_string()
    } else if name == "." || name == ".." {
        format!("'{name}' is not allowed")
    } else if name.len() > TOPIC_NAME_BYTES_MAX {
        format!(
            "the length of '{name}' is longer than the max allowed length {TOPIC_NAME_BYTES_MAX}"
        )
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        format!(
            "'{name}' contains one or more characters other than ASCII alphanumerics, '.', '_' \
             and '-'"
        )
    } else {
        return Ok(());
    };
    Err(format!("Topic name is invalid: {why}"))
}

/// Kafka forbids two topics whose names differ only in '.' versus '_' (metric names collide).
pub fn unify_collision_chars(name: &str) -> String {
    name.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_topic_name_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad/name")
            .unwrap_err()
            .contains("bad/name"));
        assert!(validate_topic_name("sp ace").is_err());
        assert!(validate_topic_name("é").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250))
            .unwrap_err()
            .contains("249"));
        assert_eq!(unify_collision_chars("a.b_c"), "a_b_c");
    }
}
