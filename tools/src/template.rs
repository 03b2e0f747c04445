//! `--format-template` for consumed records, in the spirit of kcat's and rpk's: `%v` value,
//! `%k` key, `%t` topic, `%p` partition, `%o` offset, `%d` (or `%T`) timestamp in ms, `%h`
//! headers as `k=v,k=v`, `%K`/`%V` key/value length in bytes, `%%` a percent sign; `\n`,
//! `\t`, `\r`, `\\` escapes. A newline is added unless the template ends with one.

use std::io::Write;

use crate::client::records::Message;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Vec<u8>),
    Key,
    Value,
    Topic,
    Partition,
    Offset,
    Timestamp,
    Headers,
    KeyLen,
    ValueLen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown directive %{0} (known: %v %k %t %p %o %d %T %h %K %V %%)")]
    UnknownDirective(char),
    #[error("unknown escape \\{0} (known: \\n \\t \\r \\\\)")]
    UnknownEscape(char),
    #[error("the template ends in the middle of {0}")]
    Truncated(&'static str),
}

/// The default: one value per line.
pub const DEFAULT_TEMPLATE: &str = "%v";

impl Template {
    pub fn parse(s: &str) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = Vec::new();
        let mut chars = s.chars();
        let flush = |text: &mut Vec<u8>, pieces: &mut Vec<Piece>| {
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(text)));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '%' => {
                    let d = chars
                        .next()
                        .ok_or(TemplateError::Truncated("a % directive"))?;
                    let piece = match d {
                        '%' => {
                            text.push(b'%');
                            continue;
                        }
                        'v' => Piece::Value,
                        'k' => Piece::Key,
                        't' => Piece::Topic,
                        'p' => Piece::Partition,
                        'o' => Piece::Offset,
                        'd' | 'T' => Piece::Timestamp,
                        'h' => Piece::Headers,
                        'K' => Piece::KeyLen,
                        'V' => Piece::ValueLen,
                        other => return Err(TemplateError::UnknownDirective(other)),
                    };
                    flush(&mut text, &mut pieces);
                    pieces.push(piece);
                }
                '\\' => {
                    let e = chars
                        .next()
                        .ok_or(TemplateError::Truncated("a \\ escape"))?;
                    text.push(match e {
                        'n' => b'\n',
                        't' => b'\t',
                        'r' => b'\r',
                        '\\' => b'\\',
                        other => return Err(TemplateError::UnknownEscape(other)),
                    });
                }
                c => {
                    let mut b = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        // Text is flushed only before a directive, so a template ending in a newline still
        // has it in `text` here.
        if text.last() != Some(&b'\n') {
            text.push(b'\n');
        }
        flush(&mut text, &mut pieces);
        Ok(Template { pieces })
    }

    /// Appends one record's line to `out` (key and value bytes are written as they are).
    pub fn render(&self, topic: &str, partition: i32, m: &Message, out: &mut Vec<u8>) {
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.extend_from_slice(t),
                Piece::Key => out.extend_from_slice(m.key.as_deref().unwrap_or_default()),
                Piece::Value => out.extend_from_slice(m.value.as_deref().unwrap_or_default()),
                Piece::Topic => out.extend_from_slice(topic.as_bytes()),
                Piece::Partition => write!(out, "{partition}").expect("writing to a Vec"),
                Piece::Offset => write!(out, "{}", m.offset).expect("writing to a Vec"),
                Piece::Timestamp => write!(out, "{}", m.timestamp).expect("writing to a Vec"),
                Piece::KeyLen => write!(out, "{}", m.key.as_ref().map_or(-1, |k| k.len() as i64))
                    .expect("writing to a Vec"),
                Piece::ValueLen => {
                    write!(out, "{}", m.value.as_ref().map_or(-1, |v| v.len() as i64))
                        .expect("writing to a Vec")
                }
                Piece::Headers => {
                    for (i, (k, v)) in m.headers.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(k.as_bytes());
                        out.push(b'=');
                        out.extend_from_slice(v.as_deref().unwrap_or_default());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> Message {
        Message {
            key: Some(Bytes::from_static(b"user-1")),
            value: Some(Bytes::from_static(b"hello world")),
            headers: vec![
                ("trace".into(), Some(Bytes::from_static(b"abc"))),
                ("n".into(), None),
            ],
            timestamp: 1_700_000_000_123,
            offset: 42,
        }
    }

    fn render(t: &str) -> String {
        let mut out = Vec::new();
        Template::parse(t)
            .unwrap()
            .render("orders", 3, &record(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_directive() {
        assert_eq!(
            render("%k %v %o %p %t %h"),
            "user-1 hello world 42 3 orders trace=abc,n=\n"
        );
        assert_eq!(
            render("%d|%T|%K|%V|100%%"),
            "1700000000123|1700000000123|6|11|100%\n"
        );
    }

    #[test]
    fn default_is_the_value_per_line() {
        assert_eq!(render(DEFAULT_TEMPLATE), "hello world\n");
    }

    #[test]
    fn escapes_and_a_single_trailing_newline() {
        assert_eq!(render("%k\\t%v\\n"), "user-1\thello world\n");
        assert_eq!(render("%v\\n\\n"), "hello world\n\n");
        assert_eq!(render("a\\\\b"), "a\\b\n");
        assert_eq!(render("ü%v"), "ühello world\n");
    }

    #[test]
    fn null_key_and_value_render_empty_with_length_minus_one() {
        let mut out = Vec::new();
        let m = Message::default();
        Template::parse("[%k][%v] %K %V")
            .unwrap()
            .render("t", 0, &m, &mut out);
        assert_eq!(out, b"[][] -1 -1\n");
    }

    #[test]
    fn bad_templates_are_rejected() {
        assert_eq!(
            Template::parse("%x"),
            Err(TemplateError::UnknownDirective('x'))
        );
        assert_eq!(
            Template::parse("%v\\q"),
            Err(TemplateError::UnknownEscape('q'))
        );
        assert!(matches!(
            Template::parse("%"),
            Err(TemplateError::Truncated(_))
        ));
        assert!(matches!(
            Template::parse("\\"),
            Err(TemplateError::Truncated(_))
        ));
    }
}
