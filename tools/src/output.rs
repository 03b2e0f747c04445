//! How results reach the operator: aligned text tables (one status per item) or JSON.

use std::io::Write;

use serde_json::{json, Value};

use crate::client::KafkaError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned tables for people.
    Text,
    /// One JSON document (consume: one JSON object per record and line).
    Json,
}

/// Whether every item of a command succeeded; the process exits 1 otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn from_ok(ok: bool) -> Outcome {
        if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }
}

/// Columns separated by at least two spaces, headers in capitals (as rpk prints them).
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let cols = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.headers).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(cols) {
                if i + 1 == cols {
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    let pad = widths[i] - c.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        print!("{}", self.render());
    }
}

/// A section title for multi-part text output (`topic describe`, `cluster info`).
pub fn section(title: &str) {
    println!("{title}\n{}", "=".repeat(title.chars().count()));
}

/// `OK`, or `ERROR_NAME: message`.
pub fn status_text(e: Option<&KafkaError>) -> String {
    match e {
        None => "OK".to_string(),
        Some(e) => e.to_string(),
    }
}

/// `{"status": "OK"}`, or the error's name, code and message.
pub fn status_json(e: Option<&KafkaError>) -> Value {
    match e {
        None => json!({"status": "OK"}),
        Some(e) => json!({"status": e.name(), "error_code": e.code, "message": e.message()}),
    }
}

/// `item` (an object) with the status fields merged in.
pub fn with_status(mut item: Value, e: Option<&KafkaError>) -> Value {
    if let (Value::Object(m), Value::Object(s)) = (&mut item, status_json(e)) {
        m.extend(s);
    }
    item
}

pub fn print_json(v: &Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (`| head`) is not worth a panic.
    let _ = serde_json::to_writer(&mut out, v);
    let _ = out.write_all(b"\n");
}

const B64_STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64_URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

/// Standard padded base64 (binary keys and values in JSON output).
pub fn base64_std(data: &[u8]) -> String {
    base64(data, B64_STD, true)
}

/// URL-safe unpadded base64, as Kafka prints topic ids.
pub fn base64_url(data: &[u8]) -> String {
    base64(data, B64_URL, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_with_two_spaces() {
        let mut t = Table::new(&["TOPIC", "STATUS"]);
        t.row(["orders".to_string(), "OK".to_string()]);
        t.row([
            "x".to_string(),
            "TOPIC_ALREADY_EXISTS: Topic 'x' already exists.".to_string(),
        ]);
        assert_eq!(
            t.render(),
            "TOPIC   STATUS\norders  OK\nx       TOPIC_ALREADY_EXISTS: Topic 'x' already exists.\n"
        );
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_std(raw.as_bytes()), want);
        }
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn statuses() {
        let e = KafkaError::from_code(3, Some("no such topic")).unwrap();
        assert_eq!(status_text(None), "OK");
        assert_eq!(
            status_text(Some(&e)),
            "UNKNOWN_TOPIC_OR_PARTITION: no such topic"
        );
        let v = with_status(json!({"topic": "t"}), Some(&e));
        assert_eq!(v["status"], "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(v["error_code"], 3);
        assert_eq!(v["topic"], "t");
    }
}
