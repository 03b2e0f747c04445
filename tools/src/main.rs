//! `spate`, the operator CLI. Not written yet: it exits with an explanation instead of
//! pretending to work.

fn main() {
    eprintln!(
        "spate: the operator CLI is not implemented yet. Use Apache Kafka's tools \
         (kafka-topics, kafka-configs) against spated meanwhile; see tools/README.md."
    );
    std::process::exit(2);
}
