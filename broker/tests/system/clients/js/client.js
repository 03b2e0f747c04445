'use strict'
// kafkajs driver for the client-matrix system tests (broker/tests/system/test_client_matrix.py).
//
// Reads one JSON request on stdin, prints one JSON result on stdout (exit 0), or
// {"error": "..."} (exit 1). Same shapes as the franz-go and Java drivers (clients/README.md);
// bytes are base64, null stays null.
//
//   produce        Producer.send of all records (explicit partition + timestamp) with the codec
//                  -> {"offsets": [[partition, offset], ...]} in input order
//   consume        direct partition fetch, no consumer group: kafkajs has no assign(), so this
//                  drives kafkajs's own Cluster / Broker.fetch / Batch (the code path its
//                  consumer uses for fetching and decoding) from offset 0 or "start"
//                  ({partition: offset}); "max_partition_bytes" makes the fetches small
//                  -> {"records": [{"p", "o", "k", "v", "h", "ts", "tt"}]}
//   group_consume  Consumer with groupId, subscribe fromBeginning, autoCommit off; commits the
//                  consumed offsets (commitOffsets) and disconnects (leaves the group)
//
// Codecs: gzip is built in; snappy = kafkajs-snappy (pure JS), lz4 = lz4js (pure JS, adapter in
// lz4.js), zstd = zstd-codec (WebAssembly, adapter in zstd.js). kafkajs headers are an object:
// duplicate keys become an array, so a record's headers keep their order only when equal keys
// are adjacent (the tests only send such records to kafkajs). kafkajs 2.2.4 cannot produce a
// null header value (sizeOfHeaders calls Buffer.byteLength(null) and throws); it reads them.
process.env.KAFKAJS_NO_PARTITIONER_WARNING = '1' // partitions are explicit here
const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs')
const Cluster = require('kafkajs/src/cluster')
const Batch = require('kafkajs/src/consumer/batch')
const { createLogger } = require('kafkajs/src/loggers')
const ISOLATION_LEVEL = require('kafkajs/src/protocol/isolationLevel')
const defaultSocketFactory = require('kafkajs/src/network/socketFactory')

CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy')
CompressionCodecs[CompressionTypes.LZ4] = require('./lz4.js')
CompressionCodecs[CompressionTypes.ZSTD] = require('./zstd.js')

const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}

// kafkajs logs to stdout by default; stdout is the JSON result here.
const logCreator = () => ({ namespace, level, log }) => {
  const { message, ...extra } = log
  process.stderr.write(`[kafkajs ${namespace}] ${message} ${JSON.stringify(extra)}\n`)
}

const b64 = b => (b == null ? null : Buffer.from(b, 'base64'))
const enc = b => (b == null ? null : Buffer.from(b).toString('base64'))

function kafka(req) {
  return new Kafka({
    clientId: 'spate-kafkajs',
    brokers: [req.bootstrap],
    logLevel: logLevel.WARN,
    logCreator,
    requestTimeout: 15000,
    retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 },
  })
}

function toHeaders(list) {
  // [{k, v}] -> kafkajs header object (duplicates -> arrays, in order)
  const out = {}
  for (const { k, v } of list || []) {
    const value = b64(v)
    if (!(k in out)) out[k] = value
    else if (Array.isArray(out[k])) out[k].push(value)
    else out[k] = [out[k], value]
  }
  return out
}

function fromHeaders(obj) {
  const out = []
  for (const [k, v] of Object.entries(obj || {})) {
    for (const value of Array.isArray(v) ? v : [v]) out.push({ k, v: enc(value) })
  }
  return out
}

async function produce(req) {
  if (!(req.codec in CODECS)) throw new Error(`unknown codec ${req.codec}`)
  const producer = kafka(req).producer({ allowAutoTopicCreation: false })
  await producer.connect()
  try {
    const messages = req.records.map(r => ({
      partition: r.p,
      key: b64(r.k),
      value: b64(r.v),
      headers: toHeaders(r.h),
      timestamp: String(r.ts),
    }))
    const meta = await producer.send({
      topic: req.topic,
      messages,
      acks: req.acks === undefined ? -1 : req.acks,
      timeout: 15000,
      compression: CODECS[req.codec],
    })
    // One result per partition: base offset of that partition's batch; records keep their
    // input order within a partition.
    const base = {}
    for (const m of meta) base[m.partition] = Number(m.baseOffset)
    const next = {}
    const offsets = req.records.map(r => {
      const i = next[r.p] || 0
      next[r.p] = i + 1
      return [r.p, base[r.p] + i]
    })
    return { offsets }
  } finally {
    await producer.disconnect()
  }
}

function toRecord(partition, m) {
  return {
    p: partition,
    o: Number(m.offset),
    k: enc(m.key),
    v: enc(m.value),
    h: fromHeaders(m.headers),
    ts: Number(m.timestamp),
    tt: m.batchContext && m.batchContext.timestampType !== undefined ? m.batchContext.timestampType : null,
  }
}

async function consume(req) {
  const cluster = new Cluster({
    logger: createLogger({ level: logLevel.WARN, logCreator }),
    brokers: [req.bootstrap],
    clientId: 'spate-kafkajs',
    socketFactory: defaultSocketFactory(),
    connectionTimeout: 5000,
    requestTimeout: 15000,
    enforceRequestTimeout: true,
    metadataMaxAge: 300000,
    allowAutoTopicCreation: false,
    retry: { retries: 8, initialRetryTime: 100, maxRetryTime: 2000 },
    offsets: new Map(),
  })
  await cluster.connect()
  try {
    await cluster.addTargetTopic(req.topic)
    const next = {}
    for (const p of req.partitions) next[p] = (req.start || {})[p] || 0
    const partMax = req.max_partition_bytes || 1048576
    const records = []
    const deadline = Date.now() + req.timeout_ms
    let extraUntil = null
    while (true) {
      const leaders = cluster.findLeaderForPartitions(req.topic, req.partitions)
      for (const [nodeId, parts] of Object.entries(leaders)) {
        const broker = await cluster.findBroker({ nodeId })
        const { responses } = await broker.fetch({
          replicaId: -1,
          isolationLevel: ISOLATION_LEVEL.READ_COMMITTED,
          maxWaitTime: 200,
          minBytes: 1,
          maxBytes: 4 * partMax,
          topics: [{
            topic: req.topic,
            partitions: parts.map(p => ({ partition: p, fetchOffset: String(next[p]), maxBytes: partMax })),
          }],
        })
        for (const { topicName, partitions } of responses) {
          for (const pd of partitions) {
            const batch = new Batch(topicName, String(next[pd.partition]), pd)
            for (const m of batch.messages) records.push(toRecord(pd.partition, m))
            if (!batch.isEmptyIncludingFiltered()) next[pd.partition] = Number(batch.lastOffset()) + 1
          }
        }
      }
      if (records.length >= req.count && extraUntil === null) extraUntil = Date.now() + 500
      if (extraUntil !== null && Date.now() >= extraUntil) break
      if (Date.now() > deadline) {
        throw new Error(`consumed ${records.length} of ${req.count} records before the timeout`)
      }
    }
    return { records }
  } finally {
    await cluster.disconnect()
  }
}

async function groupConsume(req) {
  const consumer = kafka(req).consumer({
    groupId: req.group,
    allowAutoTopicCreation: false,
    sessionTimeout: 10000,
    heartbeatInterval: 1000,
    maxWaitTimeInMs: 500,
  })
  await consumer.connect()
  const records = []
  const last = {}
  let failure = null
  try {
    await consumer.subscribe({ topics: [req.topic], fromBeginning: true })
    let extraUntil = null
    let done
    const finished = new Promise(resolve => { done = resolve })
    consumer.on(consumer.events.CRASH, e => { failure = e.payload.error; done() })
    await consumer.run({
      autoCommit: false,
      eachMessage: async ({ partition, message }) => {
        records.push(toRecord(partition, message))
        last[partition] = Number(message.offset)
        if (records.length >= req.count && extraUntil === null) {
          extraUntil = Date.now() + 500
          setTimeout(done, 500)
        }
      },
    })
    const timer = setTimeout(() => {
      failure = new Error(`consumed ${records.length} of ${req.count} records before the timeout`)
      done()
    }, req.timeout_ms)
    await finished
    clearTimeout(timer)
    if (failure) throw failure
    await consumer.commitOffsets(Object.entries(last).map(([p, o]) => ({
      topic: req.topic, partition: Number(p), offset: String(o + 1),
    })))
    return { records }
  } finally {
    await consumer.disconnect()
  }
}

async function main() {
  const chunks = []
  for await (const c of process.stdin) chunks.push(c)
  const req = JSON.parse(Buffer.concat(chunks).toString('utf8'))
  req.timeout_ms = req.timeout_ms || 30000
  const ops = { produce, consume, group_consume: groupConsume }
  if (!ops[req.op]) throw new Error(`unknown op ${req.op}`)
  return ops[req.op](req)
}

main().then(
  out => {
    process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(0))
  },
  err => {
    process.stdout.write(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }) + '\n',
      () => process.exit(1))
  }
)
