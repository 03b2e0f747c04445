//! The log start offset checkpoint of a partition directory (Kafka's
//! `log-start-offset-checkpoint`, one file per partition here).
//!
//! Moving the log start (DeleteRecords, retention) inside a segment leaves bytes below it on
//! disk; the checkpoint keeps them hidden across restarts. Written with temp file + fsync +
//! rename + directory fsync, so a crash leaves the old or the new value, never a torn one; a
//! CRC-32C guards against anything else. Blocking std IO: run it off the reactor (glommio's
//! `spawn_blocking`). Recovery ignores the file (it is not a segment name).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub const FILE: &str = "log-start-offset";
const TMP: &str = "log-start-offset.tmp";
const VERSION: u32 = 1;

fn line(offset: u64) -> String {
    let body = format!("{VERSION} {offset}");
    format!("{body} {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

/// Persists `offset` as the log start of the partition in `dir`.
pub fn write(dir: &Path, offset: u64) -> io::Result<()> {
    let tmp = dir.join(TMP);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(line(offset).as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(FILE))?;
    File::open(dir)?.sync_all()
}

/// The persisted log start, `None` when there is none. A damaged file is an error naming
/// what is wrong (the caller decides: Spate logs it and serves from the first batch).
pub fn read(dir: &Path) -> io::Result<Option<u64>> {
    let text = match fs::read_to_string(dir.join(FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {why}: {text:?}", dir.join(FILE).display()),
        )
    };
    let parts: Vec<&str> = text.trim_end().split(' ').collect();
    let [version, offset, crc] = parts[..] else {
        return Err(bad("expected three fields"));
    };
    if version.parse::<u32>().ok() != Some(VERSION) {
        return Err(bad("unknown version"));
    }
    let offset: u64 = offset.parse().map_err(|_| bad("offset is not a number"))?;
    if line(offset).trim_end().rsplit(' ').next() != Some(crc) {
        return Err(bad("checksum mismatch"));
    }
    Ok(Some(offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        write(d.path(), 42).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(42));
        write(d.path(), 7_000_000_000).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(7_000_000_000));
        fs::write(d.path().join(FILE), "1 43 00000000\n").unwrap();
        let e = read(d.path()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        fs::write(d.path().join(FILE), "garbage").unwrap();
        assert!(read(d.path()).is_err());
    }
}
