//! Kafka's topic-name rules (`org.apache.kafka.common.internals.Topic`).

use crate::limits::TOPIC_NAME_BYTES_MAX;

/// Checks a topic name; the error is Kafka's INVALID_TOPIC_EXCEPTION message.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_BYTES_MAX} characters, \
             topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII \
             alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
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
