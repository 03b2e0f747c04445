//! `spate topic produce`: one record per input line, batched per partition.
//!
//! A reader thread hands lines over a bounded channel; the main thread partitions them, and
//! sends everything pending (one Produce per leader) when a partition's batch is full, when
//! input pauses for `LINGER`, or at the end of input.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::ProduceRequest;
use kafka_protocol::records::Compression;
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::ProduceArgs;
use crate::client::records::{encode_batch, parse_compression, Message};
use crate::client::{topic_name, KafkaError, TopicMeta};
use crate::output::{print_json, with_status, Outcome, Table};
use crate::partitioner::{partition_for_key, RoundRobin};

/// A partition's batch is sent once it holds this many bytes (well below Kafka's default
/// max.message.bytes of 1 MiB, even uncompressed).
const BATCH_BYTES_TARGET: usize = 256 << 10;
/// Everything pending is sent once this much is buffered across partitions.
const PENDING_BYTES_MAX: usize = 4 << 20;
/// Input that pauses this long is sent (interactive use, `tail -f | spate topic produce`).
const LINGER: Duration = Duration::from_millis(50);
/// Lines the reader thread may run ahead of the sender.
const CHANNEL_LINES_MAX: usize = 4096;
/// Sends of one batch before its partition is reported failed (retriable errors only).
const SEND_ATTEMPTS_MAX: u32 = 6;
/// Below this many bytes of input a progress bar is not worth drawing.
const PROGRESS_BYTES_MIN: u64 = 1 << 20;

enum Input {
    Line(Vec<u8>),
    Failed(String),
}

#[derive(Default)]
struct PartitionStats {
    records: u64,
    failed: u64,
    first_offset: Option<i64>,
    last_offset: Option<i64>,
    error: Option<KafkaError>,
}

struct Producer {
    topic: String,
    meta: TopicMeta,
    acks: i16,
    compression: Compression,
    stats: BTreeMap<i32, PartitionStats>,
}

pub fn run(ctx: &mut Ctx, args: ProduceArgs) -> Result<Outcome> {
    let compression = parse_compression(&args.compression).expect("clap restricts the values");
    let meta = ctx
        .client
        .topic_metadata(&args.topic)
        .with_context(|| format!("topic {}", args.topic))?;
    let partitions = meta.partitions.len() as i32;
    if let Some(p) = args.partition {
        if !(0..partitions).contains(&p) {
            bail!(
                "topic {} has partitions 0..{}; there is no partition {p}",
                args.topic,
                partitions - 1
            );
        }
    }
    let (input, total_bytes, interactive): (Box<dyn Read + Send>, Option<u64>, bool) =
        match &args.file {
            Some(path) => {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let len = f.metadata().ok().map(|m| m.len());
                (Box::new(f), len, false)
            }
            None => {
                let tty = std::io::stdin().is_terminal();
                if tty {
                    eprintln!("spate: one record per line; end with Ctrl-D");
                }
                (Box::new(std::io::stdin()), None, tty)
            }
        };
    let progress = progress_bar(total_bytes, interactive);
    let (tx, rx) = sync_channel::<Input>(CHANNEL_LINES_MAX);
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, input);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if tx.send(Input::Line(line)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Input::Failed(e.to_string()));
                    return;
                }
            }
        }
    });

    let mut producer = Producer {
        topic: args.topic.clone(),
        meta,
        acks: args.acks,
        compression,
        stats: BTreeMap::new(),
    };
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Some(Bytes::from(v.clone()))))
        .collect();
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut rr = RoundRobin::default();
    let mut pending: BTreeMap<i32, Vec<Message>> = BTreeMap::new();
    let mut pending_bytes: BTreeMap<i32, usize> = BTreeMap::new();
    let read_error = loop {
        match next(&rx) {
            Next::Line(line) => {
                if let Some(pb) = &progress {
                    pb.inc(line.len() as u64 + 1);
                }
                let (key, value) = split_key(&line, separator);
                let partition = match (args.partition, &key) {
                    (Some(p), _) => p,
                    (None, Some(k)) => partition_for_key(k, partitions),
                    (None, None) => rr.next(partitions),
                };
                let m = Message {
                    key: key.map(Bytes::copy_from_slice),
                    value: Some(Bytes::copy_from_slice(value)),
                    headers: headers.clone(),
                    timestamp: crate::now_ms(),
                    offset: 0,
                };
                let size = m.size_estimate();
                pending.entry(partition).or_default().push(m);
                let part_bytes = {
                    let b = pending_bytes.entry(partition).or_default();
                    *b += size;
                    *b
                };
                let total: usize = pending_bytes.values().sum();
                if part_bytes >= BATCH_BYTES_TARGET || total >= PENDING_BYTES_MAX {
                    producer.send(ctx, std::mem::take(&mut pending))?;
                    pending_bytes.clear();
                }
            }
            Next::Idle => {
                if !pending.is_empty() {
                    producer.send(ctx, std::mem::take(&mut pending))?;
                    pending_bytes.clear();
                }
            }
            Next::End(err) => break err,
        }
    };
    if !pending.is_empty() {
        producer.send(ctx, pending)?;
    }
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let outcome = producer.report(ctx);
    if let Some(e) = read_error {
        bail!("reading input: {e}");
    }
    Ok(outcome)
}

enum Next {
    Line(Vec<u8>),
    Idle,
    End(Option<String>),
}

fn next(rx: &Receiver<Input>) -> Next {
    match rx.recv_timeout(LINGER) {
        Ok(Input::Line(l)) => Next::Line(l),
        Ok(Input::Failed(e)) => Next::End(Some(e)),
        Err(RecvTimeoutError::Timeout) => Next::Idle,
        Err(RecvTimeoutError::Disconnected) => Next::End(None),
    }
}

/// `key SEP value` → (key, value); a line without the separator has no key.
fn split_key<'a>(line: &'a [u8], sep: Option<&[u8]>) -> (Option<&'a [u8]>, &'a [u8]) {
    let Some(sep) = sep.filter(|s| !s.is_empty()) else {
        return (None, line);
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

/// A bar on stderr when it is a terminal and the run is not interactive typing.
fn progress_bar(total_bytes: Option<u64>, interactive: bool) -> Option<ProgressBar> {
    if interactive || !std::io::stderr().is_terminal() {
        return None;
    }
    match total_bytes {
        Some(n) if n >= PROGRESS_BYTES_MIN => {
            let pb = ProgressBar::new(n);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} producing [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            Some(pb)
        }
        Some(_) => None,
        None => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} producing: {bytes} read ({bytes_per_sec})")
                    .expect("valid template"),
            );
            Some(pb)
        }
    }
}

impl Producer {
    /// Sends every pending batch (one Produce per leader), retrying retriable errors after a
    /// metadata refresh; partitions that still fail are counted as failed.
    fn send(&mut self, ctx: &mut Ctx, mut todo: BTreeMap<i32, Vec<Message>>) -> Result<()> {
        let timeout_ms = ctx.client.timeout().as_millis() as i32;
        let mut last_error: BTreeMap<i32, KafkaError> = BTreeMap::new();
        for attempt in 0..SEND_ATTEMPTS_MAX {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 << attempt.min(4)));
                if let Ok(m) = ctx.client.topic_metadata(&self.topic) {
                    self.meta = m;
                }
            }
            let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
            for p in todo.keys() {
                let leader = self
                    .meta
                    .partitions
                    .iter()
                    .find(|m| m.partition == *p)
                    .map_or(-1, |m| m.leader);
                by_leader.entry(leader).or_default().push(*p);
            }
            for (leader, parts) in by_leader {
                if leader < 0 {
                    for p in parts {
                        last_error.insert(
                            p,
                            KafkaError {
                                code: 5,
                                broker_message: None,
                            },
                        );
                    }
                    continue;
                }
                let mut data = Vec::new();
                for p in &parts {
                    let batch = encode_batch(&todo[p], self.compression)?;
                    data.push(
                        PartitionProduceData::default()
                            .with_index(*p)
                            .with_records(Some(batch)),
                    );
                }
                let req = ProduceRequest::default()
                    .with_acks(self.acks)
                    .with_timeout_ms(timeout_ms)
                    .with_topic_data(vec![TopicProduceData::default()
                        .with_name(topic_name(&self.topic))
                        .with_partition_data(data)]);
                let answer = ctx.client.node(leader).and_then(|conn| {
                    if self.acks == 0 {
                        let v = conn.version::<ProduceRequest>()?;
                        conn.send_oneway(&req, v).map(|_| None)
                    } else {
                        conn.send(&req).map(Some)
                    }
                });
                let resp = match answer {
                    Ok(r) => r,
                    Err(e) => {
                        // A broken connection: reconnect and retry these partitions.
                        ctx.client.forget_node(leader);
                        for p in &parts {
                            last_error.insert(
                                *p,
                                KafkaError {
                                    code: 13,
                                    broker_message: Some(format!("{e:#}")),
                                },
                            );
                        }
                        continue;
                    }
                };
                let Some(resp) = resp else {
                    // acks=0: nothing comes back; count the records as sent.
                    for p in &parts {
                        let n = todo.remove(p).map_or(0, |v| v.len() as u64);
                        self.stats.entry(*p).or_default().records += n;
                    }
                    continue;
                };
                for t in resp.responses {
                    for pr in t.partition_responses {
                        let Some(msgs) = todo.get(&pr.index) else {
                            continue;
                        };
                        let n = msgs.len() as i64;
                        match KafkaError::from_code(pr.error_code, pr.error_message.as_deref()) {
                            None => {
                                todo.remove(&pr.index);
                                last_error.remove(&pr.index);
                                let s = self.stats.entry(pr.index).or_default();
                                s.records += n as u64;
                                if pr.base_offset >= 0 {
                                    let last = pr.base_offset + n - 1;
                                    s.first_offset = Some(
                                        s.first_offset
                                            .map_or(pr.base_offset, |f| f.min(pr.base_offset)),
                                    );
                                    s.last_offset =
                                        Some(s.last_offset.map_or(last, |l| l.max(last)));
                                }
                            }
                            Some(e) if e.is_retriable() => {
                                last_error.insert(pr.index, e);
                            }
                            Some(e) => {
                                todo.remove(&pr.index);
                                last_error.remove(&pr.index);
                                let s = self.stats.entry(pr.index).or_default();
                                s.failed += n as u64;
                                s.error = Some(e);
                            }
                        }
                    }
                }
            }
            if todo.is_empty() {
                return Ok(());
            }
        }
        for (p, msgs) in todo {
            let s = self.stats.entry(p).or_default();
            s.failed += msgs.len() as u64;
            s.error = last_error.remove(&p).or(Some(KafkaError {
                code: -1,
                broker_message: Some("the broker did not answer for this partition".into()),
            }));
        }
        Ok(())
    }

    fn report(&self, ctx: &Ctx) -> Outcome {
        let ok = self.stats.values().all(|s| s.error.is_none());
        let total: u64 = self.stats.values().map(|s| s.records).sum();
        let failed: u64 = self.stats.values().map(|s| s.failed).sum();
        let offset = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
        if ctx.json() {
            let parts: Vec<Value> = self
                .stats
                .iter()
                .map(|(p, s)| {
                    with_status(
                        json!({
                            "partition": p,
                            "records": s.records,
                            "failed": s.failed,
                            "first_offset": s.first_offset,
                            "last_offset": s.last_offset,
                        }),
                        s.error.as_ref(),
                    )
                })
                .collect();
            print_json(&json!({
                "topic": self.topic,
                "records": total,
                "failed": failed,
                "acks": self.acks,
                "partitions": parts,
            }));
        } else {
            let mut t = Table::new(&[
                "PARTITION",
                "RECORDS",
                "FIRST-OFFSET",
                "LAST-OFFSET",
                "STATUS",
            ]);
            for (p, s) in &self.stats {
                let status = match (&s.error, self.acks) {
                    (Some(e), _) => format!("{e} ({} records not produced)", s.failed),
                    (None, 0) => "SENT (acks=0: not confirmed)".to_string(),
                    (None, _) => "OK".to_string(),
                };
                t.row([
                    p.to_string(),
                    s.records.to_string(),
                    offset(s.first_offset),
                    offset(s.last_offset),
                    status,
                ]);
            }
            if t.is_empty() {
                eprintln!("spate: no input lines; nothing produced to {}", self.topic);
            } else {
                t.print();
            }
        }
        Outcome::from_ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_at_the_first_separator() {
        assert_eq!(
            split_key(b"k:v:w", Some(b":")),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(
            split_key(b"k=>v", Some(b"=>")),
            (Some(&b"k"[..]), &b"v"[..])
        );
        assert_eq!(split_key(b":v", Some(b":")), (Some(&b""[..]), &b"v"[..]));
        assert_eq!(split_key(b"novalue", Some(b":")), (None, &b"novalue"[..]));
        assert_eq!(split_key(b"k:v", None), (None, &b"k:v"[..]));
    }
}
