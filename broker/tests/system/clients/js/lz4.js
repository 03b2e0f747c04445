'use strict'
// A KafkaJS LZ4 codec on lz4js (pure JavaScript, no native build).
//
// lz4js.compress() writes frames without the block-independence flag, which Apache Kafka
// rejects ("Dependent block stream is unsupported": its Lz4BlockInputStream only reads
// independent blocks, and the broker answers the Produce with UNKNOWN_SERVER_ERROR). So the
// frame is built here with lz4js's block compressor: LZ4 frame v1, independent 64 KiB blocks
// (a fresh match table per block), no checksums other than the header's, as Kafka's own
// Lz4BlockOutputStream writes them. Decompression is lz4js's (reads any frame).
const lz4 = require('lz4js')
const xxh32 = require('lz4js/xxh32.js')

const MAGIC = [0x04, 0x22, 0x4d, 0x18]
const FLG = 0x60 // version 01, block independence
const BD = 0x40 // max block size 64 KiB
const BLOCK = 64 * 1024

function compressFrame(src) {
  const header = Buffer.from([...MAGIC, FLG, BD, 0])
  header[6] = (xxh32.hash(0, header, 4, 2) >> 8) & 0xff
  const chunks = [header]
  const out = Buffer.alloc(lz4.compressBound(BLOCK))
  for (let i = 0; i < src.length; i += BLOCK) {
    const n = Math.min(BLOCK, src.length - i)
    const size = Buffer.alloc(4)
    const c = lz4.compressBlock(src, out, i, n, new Uint32Array(1 << 16))
    if (c === 0 || c >= n) {
      size.writeUInt32LE((0x80000000 | n) >>> 0) // stored uncompressed
      chunks.push(size, Buffer.from(src.subarray(i, i + n)))
    } else {
      size.writeUInt32LE(c)
      chunks.push(size, Buffer.from(out.subarray(0, c)))
    }
  }
  chunks.push(Buffer.alloc(4)) // end mark
  return Buffer.concat(chunks)
}

module.exports = () => ({
  async compress(encoder) {
    return compressFrame(encoder.buffer)
  },
  async decompress(buffer) {
    return Buffer.from(lz4.decompress(buffer))
  },
})
