//! `--offset` / `--to` values: where a consumer starts or a group seeks to.

use std::fmt;
use std::str::FromStr;

/// Where to start, per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset (`start`, also `earliest`, `beginning`, `oldest`).
    Start,
    /// The log end offset: only records produced from now on (`end`, also `latest`, `newest`).
    End,
    /// An exact offset (`N`), clamped into [start, end].
    Exact(i64),
    /// `N` records before the end (`-N`), clamped at the start.
    BeforeEnd(i64),
    /// The first record with a timestamp at or after this many ms since the epoch (`@MS`,
    /// or `@-DURATION` relative to now, e.g. `@-15m`); the end when there is none.
    Timestamp(i64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid offset {input:?}: {why} (expected start, end, N, -N, @TIMESTAMP_MS or @-DURATION like @-15m)")]
pub struct OffsetSpecError {
    input: String,
    why: &'static str,
}

impl OffsetSpec {
    /// Parses `s`; `now_ms` anchors relative timestamps.
    pub fn parse(s: &str, now_ms: i64) -> Result<OffsetSpec, OffsetSpecError> {
        let err = |why| OffsetSpecError {
            input: s.to_string(),
            why,
        };
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "start" | "earliest" | "beginning" | "oldest" => return Ok(OffsetSpec::Start),
            "end" | "latest" | "newest" => return Ok(OffsetSpec::End),
            _ => {}
        }
        if let Some(ts) = t.strip_prefix('@') {
            if let Some(ago) = ts.strip_prefix('-') {
                let ms = parse_duration_ms(ago).ok_or_else(|| err("bad duration"))?;
                return Ok(OffsetSpec::Timestamp(now_ms.saturating_sub(ms).max(0)));
            }
            let ms: i64 = ts.parse().map_err(|_| err("bad timestamp"))?;
            if ms < 0 {
                return Err(err("negative timestamp"));
            }
            return Ok(OffsetSpec::Timestamp(ms));
        }
        if let Some(n) = t.strip_prefix('-') {
            let n: i64 = n.parse().map_err(|_| err("not a number"))?;
            return Ok(OffsetSpec::BeforeEnd(n));
        }
        let n: i64 = t
            .strip_prefix('+')
            .unwrap_or(t)
            .parse()
            .map_err(|_| err("not a number"))?;
        Ok(OffsetSpec::Exact(n))
    }

    /// The offset for a partition whose log spans [start, end) (`by_time`: the answer of a
    /// timestamp lookup, −1 when no record is that new).
    pub fn resolve(self, start: i64, end: i64, by_time: Option<i64>) -> i64 {
        match self {
            OffsetSpec::Start => start,
            OffsetSpec::End => end,
            OffsetSpec::Exact(n) => n.clamp(start, end.max(start)),
            OffsetSpec::BeforeEnd(n) => end.saturating_sub(n).max(start),
            OffsetSpec::Timestamp(_) => match by_time {
                Some(o) if o >= 0 => o.clamp(start, end.max(start)),
                _ => end,
            },
        }
    }
}

impl FromStr for OffsetSpec {
    type Err = OffsetSpecError;

    fn from_str(s: &str) -> Result<OffsetSpec, OffsetSpecError> {
        OffsetSpec::parse(s, crate::now_ms())
    }
}

impl fmt::Display for OffsetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffsetSpec::Start => f.write_str("start"),
            OffsetSpec::End => f.write_str("end"),
            OffsetSpec::Exact(n) => write!(f, "{n}"),
            OffsetSpec::BeforeEnd(n) => write!(f, "-{n}"),
            OffsetSpec::Timestamp(ms) => write!(f, "@{ms}"),
        }
    }
}

/// `500ms`, `30s`, `15m`, `2h`, `7d`; a bare number is milliseconds.
fn parse_duration_ms(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn p(s: &str) -> Result<OffsetSpec, OffsetSpecError> {
        OffsetSpec::parse(s, NOW)
    }

    #[test]
    fn named_positions() {
        assert_eq!(p("start"), Ok(OffsetSpec::Start));
        assert_eq!(p("earliest"), Ok(OffsetSpec::Start));
        assert_eq!(p("END"), Ok(OffsetSpec::End));
        assert_eq!(p("latest"), Ok(OffsetSpec::End));
    }

    #[test]
    fn numbers() {
        assert_eq!(p("0"), Ok(OffsetSpec::Exact(0)));
        assert_eq!(p("+42"), Ok(OffsetSpec::Exact(42)));
        assert_eq!(p("-10"), Ok(OffsetSpec::BeforeEnd(10)));
        assert!(p("ten").is_err());
        assert!(p("-").is_err());
        assert!(p("").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            p("@1699999999000"),
            Ok(OffsetSpec::Timestamp(1_699_999_999_000))
        );
        assert_eq!(p("@-15m"), Ok(OffsetSpec::Timestamp(NOW - 15 * 60_000)));
        assert_eq!(p("@-2h"), Ok(OffsetSpec::Timestamp(NOW - 7_200_000)));
        assert_eq!(p("@-500"), Ok(OffsetSpec::Timestamp(NOW - 500)));
        assert!(p("@").is_err());
        assert!(p("@yesterday").is_err());
        assert!(p("@-5y").is_err());
        let e = p("@x").unwrap_err().to_string();
        assert!(e.contains("expected start, end"), "{e}");
    }

    #[test]
    fn resolving_clamps_into_the_log() {
        let (start, end) = (100, 200);
        assert_eq!(OffsetSpec::Start.resolve(start, end, None), 100);
        assert_eq!(OffsetSpec::End.resolve(start, end, None), 200);
        assert_eq!(OffsetSpec::Exact(150).resolve(start, end, None), 150);
        assert_eq!(OffsetSpec::Exact(5).resolve(start, end, None), 100);
        assert_eq!(OffsetSpec::Exact(500).resolve(start, end, None), 200);
        assert_eq!(OffsetSpec::BeforeEnd(30).resolve(start, end, None), 170);
        assert_eq!(OffsetSpec::BeforeEnd(300).resolve(start, end, None), 100);
        assert_eq!(OffsetSpec::Timestamp(1).resolve(start, end, Some(120)), 120);
        assert_eq!(OffsetSpec::Timestamp(1).resolve(start, end, Some(-1)), 200);
    }

    #[test]
    fn display_round_trips() {
        for s in ["start", "end", "7", "-3", "@1234"] {
            assert_eq!(p(s).unwrap().to_string(), s);
        }
    }
}
