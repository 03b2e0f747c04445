//! `spate topic consume`: fetch from each partition's leader and print every record (a
//! template per line, or one JSON object per line), alone or as a member of a consumer group.

use std::collections::BTreeMap;
use std::io::{BufWriter, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest};
use serde_json::{json, Value};

use super::Ctx;
use crate::cli::ConsumeArgs;
use crate::client::group::{fetch_committed, Heartbeat, Member, Offsets};
use crate::client::records::{decode_fetched, Message};
use crate::client::{topic_name, KafkaError, TopicMeta, EARLIEST_TIMESTAMP, LATEST_TIMESTAMP};
use crate::offset_spec::OffsetSpec;
use crate::output::{base64_std, Outcome};
use crate::template::{Template, DEFAULT_TEMPLATE};

/// How long the broker may hold a fetch with no new data (also how quickly Ctrl-C is seen).
const FETCH_MAX_WAIT_MS: i32 = 500;
const FETCH_BYTES_MAX: i32 = 50 << 20;
const PARTITION_FETCH_BYTES: i32 = 1 << 20;
/// A batch larger than the partition limit is retried with a doubled limit up to this.
const PARTITION_FETCH_BYTES_MAX: i32 = 64 << 20;
/// How often a group member commits its positions (Kafka's auto.commit.interval.ms).
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Consecutive retriable failures (no leader, connection lost) before giving up.
const RETRIES_MAX: u32 = 50;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM stop the loop, so a group member still commits and leaves.
fn install_stop_handler() {
    let handler = on_signal as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

enum Printer {
    Template(Template),
    Json,
}

struct Consumer {
    topic: String,
    meta: TopicMeta,
    /// The next offset to print, per assigned partition.
    positions: BTreeMap<i32, i64>,
    /// `--exit-at-end`: the log end offsets to stop at.
    ends: Option<BTreeMap<i32, i64>>,
    partition_fetch_bytes: BTreeMap<i32, i32>,
    printed: u64,
    limit: Option<u64>,
    printer: Printer,
    out: BufWriter<std::io::Stdout>,
    line: Vec<u8>,
    progress: Option<ProgressBar>,
    failures: u32,
    /// stdout was closed (`| head`): stop like Ctrl-C.
    closed: bool,
}

pub fn run(ctx: &mut Ctx, args: ConsumeArgs) -> Result<Outcome> {
    install_stop_handler();
    let printer = if ctx.json() {
        Printer::Json
    } else {
        let t = args.format_template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
        Printer::Template(Template::parse(t).map_err(|e| anyhow!("--format-template: {e}"))?)
    };
    let meta = ctx
        .client
        .topic_metadata(&args.topic)
        .with_context(|| format!("topic {}", args.topic))?;
    let all: Vec<i32> = meta.partitions.iter().map(|p| p.partition).collect();
    for p in &args.partitions {
        if !all.contains(p) {
            bail!(
                "topic {} has no partition {p} (it has {})",
                args.topic,
                all.len()
            );
        }
    }
    let mut c = Consumer {
        topic: args.topic.clone(),
        meta,
        positions: BTreeMap::new(),
        ends: args.exit_at_end.then(BTreeMap::new),
        partition_fetch_bytes: BTreeMap::new(),
        printed: 0,
        limit: args.num,
        printer,
        out: BufWriter::with_capacity(1 << 16, std::io::stdout()),
        line: Vec::new(),
        progress: progress_bar(args.num),
        failures: 0,
        closed: false,
    };
    let mut member = None;
    if let Some(g) = &args.group {
        let m = Member::join(&mut ctx.client, g, vec![args.topic.clone()])?;
        c.assign(
            ctx,
            m.assignment.get(&args.topic).cloned().unwrap_or_default(),
            args.offset,
            Some(&m),
        )?;
        member = Some(m);
    } else {
        let chosen = if args.partitions.is_empty() {
            all
        } else {
            args.partitions.clone()
        };
        c.assign(ctx, chosen, args.offset, None)?;
    }

    let mut committed: Offsets = Offsets::new();
    let mut last_commit = Instant::now();
    let result = (|| -> Result<()> {
        loop {
            if STOP.load(Ordering::SeqCst) || c.closed || c.limit_reached() || c.caught_up() {
                return Ok(());
            }
            if let Some(m) = member.as_mut() {
                if m.heartbeat(&mut ctx.client)? == Heartbeat::Rejoin {
                    // Commit what was printed while this generation still owns it.
                    if let Err(e) = commit(ctx, m, &c, &mut committed) {
                        eprintln!("spate: warning: commit before rebalancing failed: {e:#}");
                    }
                    m.rejoin(&mut ctx.client)?;
                    let mine = m.assignment.get(&c.topic).cloned().unwrap_or_default();
                    c.assign(ctx, mine, args.offset, Some(m))?;
                    continue;
                }
                if last_commit.elapsed() >= COMMIT_INTERVAL {
                    commit(ctx, m, &c, &mut committed)?;
                    last_commit = Instant::now();
                }
            }
            if c.positions.is_empty() {
                // A group member with nothing assigned waits for the next rebalance.
                std::thread::sleep(Duration::from_millis(FETCH_MAX_WAIT_MS as u64));
                continue;
            }
            c.fetch_round(ctx)?;
        }
    })();
    let _ = c.out.flush();
    if let Some(pb) = &c.progress {
        pb.finish_and_clear();
    }
    // A group member commits and leaves even when the loop failed.
    if let Some(m) = member.as_mut() {
        let done = commit(ctx, m, &c, &mut committed).and(m.leave(&mut ctx.client));
        if let (Ok(()), Err(e)) = (&result, done) {
            return Err(e);
        }
    }
    result.map(|_| Outcome::Success)
}

fn commit(ctx: &mut Ctx, m: &mut Member, c: &Consumer, committed: &mut Offsets) -> Result<()> {
    let changed: Offsets = c
        .positions
        .iter()
        .map(|(p, o)| ((c.topic.clone(), *p), *o))
        .filter(|(k, o)| committed.get(k) != Some(o))
        .collect();
    m.commit(&mut ctx.client, &changed)?;
    committed.extend(changed);
    Ok(())
}

fn progress_bar(limit: Option<u64>) -> Option<ProgressBar> {
    // Records go to stdout; a bar on the same terminal would tangle with them.
    if !std::io::stderr().is_terminal() || std::io::stdout().is_terminal() {
        return None;
    }
    let pb = match limit {
        Some(n) => {
            let pb = ProgressBar::new(n);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} consuming [{bar:30}] {human_pos}/{human_len} records ({elapsed}, eta {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb
        }
        None => {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner} consuming: {human_pos} records ({elapsed})",
                )
                .expect("valid template"),
            );
            pb
        }
    };
    Some(pb)
}

impl Consumer {
    /// Takes `partitions` as the assignment: committed offsets (group) first, else `spec`.
    fn assign(
        &mut self,
        ctx: &mut Ctx,
        partitions: Vec<i32>,
        spec: OffsetSpec,
        member: Option<&Member>,
    ) -> Result<()> {
        self.positions.clear();
        if partitions.is_empty() {
            return Ok(());
        }
        if partitions.iter().any(|p| self.leader(*p) < 0) {
            self.refresh(ctx)?;
        }
        let committed = match member {
            Some(m) => {
                let wanted = BTreeMap::from([(self.topic.clone(), partitions.clone())]);
                fetch_committed(&mut ctx.client, m.coordinator, &m.group, Some(&wanted))?
            }
            None => Offsets::new(),
        };
        let need: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !committed.contains_key(&(self.topic.clone(), *p)))
            .collect();
        let lookup = |ts: i64, parts: &[i32], me: &Consumer| -> Vec<(String, i32, i32, i64)> {
            parts
                .iter()
                .map(|p| (me.topic.clone(), *p, me.leader(*p), ts))
                .collect()
        };
        let resolve_needed = !need.is_empty();
        let starts = if resolve_needed {
            ctx.client
                .list_offsets(&lookup(EARLIEST_TIMESTAMP, &need, self))?
        } else {
            BTreeMap::new()
        };
        let ends_needed = resolve_needed || self.ends.is_some();
        let end_parts = if self.ends.is_some() {
            partitions.clone()
        } else {
            need.clone()
        };
        let ends = if ends_needed {
            ctx.client
                .list_offsets(&lookup(LATEST_TIMESTAMP, &end_parts, self))?
        } else {
            BTreeMap::new()
        };
        let by_time = match spec {
            OffsetSpec::Timestamp(ts) if resolve_needed => {
                ctx.client.list_offsets(&lookup(ts, &need, self))?
            }
            _ => BTreeMap::new(),
        };
        let get = |m: &BTreeMap<(String, i32), Result<i64, KafkaError>>, p: i32, what: &str| match m
            .get(&(self.topic.clone(), p))
        {
            Some(Ok(o)) => Ok(*o),
            Some(Err(e)) => Err(anyhow!("{what} offset of {}/{p}: {e}", self.topic)),
            None => Err(anyhow!("no {what} offset for {}/{p}", self.topic)),
        };
        for p in &partitions {
            let pos = match committed.get(&(self.topic.clone(), *p)) {
                Some(o) => *o,
                None => {
                    let start = get(&starts, *p, "log start")?;
                    let end = get(&ends, *p, "log end")?;
                    let t = by_time
                        .get(&(self.topic.clone(), *p))
                        .and_then(|r| r.as_ref().ok().copied());
                    spec.resolve(start, end, t)
                }
            };
            self.positions.insert(*p, pos);
        }
        if let Some(stop_at) = self.ends.as_mut() {
            for p in &partitions {
                stop_at.insert(*p, get(&ends, *p, "log end")?);
            }
        }
        Ok(())
    }

    fn leader(&self, p: i32) -> i32 {
        self.meta
            .partitions
            .iter()
            .find(|m| m.partition == p)
            .map_or(-1, |m| m.leader)
    }

    fn refresh(&mut self, ctx: &mut Ctx) -> Result<()> {
        self.meta = ctx
            .client
            .topic_metadata(&self.topic)
            .with_context(|| format!("topic {}", self.topic))?;
        Ok(())
    }

    fn limit_reached(&self) -> bool {
        self.limit.is_some_and(|n| self.printed >= n)
    }

    fn caught_up(&self) -> bool {
        match &self.ends {
            None => false,
            Some(ends) => self
                .positions
                .iter()
                .all(|(p, pos)| ends.get(p).is_some_and(|e| pos >= e)),
        }
    }

    /// A retriable failure: refresh metadata and back off, until `RETRIES_MAX` in a row.
    fn retry(&mut self, ctx: &mut Ctx, why: String) -> Result<()> {
        self.failures += 1;
        if self.failures > RETRIES_MAX {
            bail!("giving up after {RETRIES_MAX} retries: {why}");
        }
        std::thread::sleep(Duration::from_millis(
            100 * u64::from(self.failures.min(10)),
        ));
        let _ = self.refresh(ctx);
        Ok(())
    }

    /// One Fetch per leader of the assigned partitions that still have records to read.
    fn fetch_round(&mut self, ctx: &mut Ctx) -> Result<()> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (p, pos) in &self.positions {
            if let Some(ends) = &self.ends {
                if ends.get(p).is_some_and(|e| pos >= e) {
                    continue;
                }
            }
            by_leader.entry(self.leader(*p)).or_default().push(*p);
        }
        for (leader, parts) in by_leader {
            if self.limit_reached() || self.closed || STOP.load(Ordering::SeqCst) {
                return Ok(());
            }
            if leader < 0 {
                self.retry(
                    ctx,
                    format!("no leader for partitions {parts:?} of {}", self.topic),
                )?;
                continue;
            }
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(FETCH_MAX_WAIT_MS)
                .with_min_bytes(1)
                .with_max_bytes(FETCH_BYTES_MAX)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(topic_name(&self.topic))
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                FetchPartition::default()
                                    .with_partition(*p)
                                    .with_fetch_offset(self.positions[p])
                                    .with_partition_max_bytes(
                                        *self
                                            .partition_fetch_bytes
                                            .get(p)
                                            .unwrap_or(&PARTITION_FETCH_BYTES),
                                    )
                            })
                            .collect(),
                    )]);
            let resp = match ctx.client.node(leader).and_then(|c| c.send(&req)) {
                Ok(r) => r,
                Err(e) => {
                    ctx.client.forget_node(leader);
                    self.retry(ctx, format!("fetching from node {leader}: {e:#}"))?;
                    continue;
                }
            };
            if let Some(e) = KafkaError::from_code(resp.error_code, None) {
                bail!("Fetch from node {leader}: {e}");
            }
            for t in resp.responses {
                for pd in t.partitions {
                    let p = pd.partition_index;
                    let Some(&pos) = self.positions.get(&p) else {
                        continue;
                    };
                    if let Some(e) = KafkaError::from_code(pd.error_code, None) {
                        self.on_partition_error(ctx, p, pos, e)?;
                        continue;
                    }
                    self.failures = 0;
                    let Some(records) = pd.records.filter(|r| !r.is_empty()) else {
                        continue;
                    };
                    let got = decode_fetched(records, pos).with_context(|| {
                        format!("records of {}/{p} at offset {pos}", self.topic)
                    })?;
                    let Some(next) = got.next_offset else {
                        // Not one complete batch fit: ask for more next time.
                        let limit = self
                            .partition_fetch_bytes
                            .entry(p)
                            .or_insert(PARTITION_FETCH_BYTES);
                        if *limit >= PARTITION_FETCH_BYTES_MAX {
                            bail!("a batch in {}/{p} at offset {pos} is larger than {PARTITION_FETCH_BYTES_MAX} bytes", self.topic);
                        }
                        *limit *= 2;
                        continue;
                    };
                    // Past every printed record; past the whole batch (control records,
                    // compaction gaps) only when all of it was printed.
                    let mut new_pos = pos;
                    let mut all = true;
                    for m in &got.messages {
                        if self.limit_reached() || self.closed {
                            all = false;
                            break;
                        }
                        self.print(p, m);
                        if self.closed {
                            all = false;
                            break;
                        }
                        new_pos = m.offset + 1;
                    }
                    if all {
                        new_pos = next.max(new_pos);
                    }
                    self.positions.insert(p, new_pos);
                }
            }
            if self.out.flush().is_err() {
                self.closed = true;
            }
        }
        Ok(())
    }

    fn on_partition_error(&mut self, ctx: &mut Ctx, p: i32, pos: i64, e: KafkaError) -> Result<()> {
        if e.is(ResponseError::OffsetOutOfRange) {
            // Deleted by retention, or truncated: continue from the nearest end.
            let leader = self.leader(p);
            let q = |ts| vec![(self.topic.clone(), p, leader, ts)];
            let start = ctx.client.list_offsets(&q(EARLIEST_TIMESTAMP))?;
            let end = ctx.client.list_offsets(&q(LATEST_TIMESTAMP))?;
            let key = (self.topic.clone(), p);
            let (Some(Ok(start)), Some(Ok(end))) = (start.get(&key), end.get(&key)) else {
                return self.retry(
                    ctx,
                    format!("offsets of {}/{p} after OFFSET_OUT_OF_RANGE", self.topic),
                );
            };
            let to = if pos < *start { *start } else { *end };
            eprintln!("spate: warning: offset {pos} of {}/{p} is out of range [{start}, {end}]; continuing at {to}", self.topic);
            self.positions.insert(p, to);
            return Ok(());
        }
        if e.is_retriable() {
            return self.retry(ctx, format!("{}/{p}: {e}", self.topic));
        }
        bail!("fetching {}/{p}: {e}", self.topic)
    }

    fn print(&mut self, partition: i32, m: &Message) {
        self.line.clear();
        match &self.printer {
            Printer::Template(t) => t.render(&self.topic, partition, m, &mut self.line),
            Printer::Json => {
                let v = record_json(&self.topic, partition, m);
                serde_json::to_writer(&mut self.line, &v).expect("serializing to a Vec");
                self.line.push(b'\n');
            }
        }
        if self.out.write_all(&self.line).is_err() {
            self.closed = true;
            return;
        }
        self.printed += 1;
        if let Some(pb) = &self.progress {
            pb.inc(1);
        }
    }
}

/// A record as JSON: key and value as strings, or base64 with `*_encoding` when not UTF-8.
fn record_json(topic: &str, partition: i32, m: &Message) -> Value {
    let mut v = json!({
        "topic": topic,
        "partition": partition,
        "offset": m.offset,
        "timestamp": m.timestamp,
    });
    let obj = v.as_object_mut().expect("an object");
    for (name, data) in [("key", &m.key), ("value", &m.value)] {
        match data.as_deref().map(std::str::from_utf8) {
            None => {
                obj.insert(name.into(), Value::Null);
            }
            Some(Ok(s)) => {
                obj.insert(name.into(), json!(s));
            }
            Some(Err(_)) => {
                let raw = data.as_deref().expect("checked above");
                obj.insert(name.into(), json!(base64_std(raw)));
                obj.insert(format!("{name}_encoding"), json!("base64"));
            }
        }
    }
    let headers: Vec<Value> = m
        .headers
        .iter()
        .map(|(k, val)| {
            let value = match val.as_deref().map(std::str::from_utf8) {
                None => Value::Null,
                Some(Ok(s)) => json!(s),
                Some(Err(_)) => json!(base64_std(val.as_deref().expect("checked above"))),
            };
            json!({"key": k, "value": value})
        })
        .collect();
    obj.insert("headers".into(), Value::Array(headers));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn records_as_json() {
        let m = Message {
            key: None,
            value: Some(Bytes::from_static(b"hi")),
            headers: vec![("h".into(), Some(Bytes::from_static(b"v")))],
            timestamp: 5,
            offset: 9,
        };
        let v = record_json("t", 2, &m);
        assert_eq!(
            v,
            json!({"topic": "t", "partition": 2, "offset": 9, "timestamp": 5, "key": null,
                   "value": "hi", "headers": [{"key": "h", "value": "v"}]})
        );
        let bin = Message {
            value: Some(Bytes::from_static(&[0xff, 0x00])),
            ..m
        };
        let v = record_json("t", 2, &bin);
        assert_eq!(v["value"], "/wA=");
        assert_eq!(v["value_encoding"], "base64");
    }
}
