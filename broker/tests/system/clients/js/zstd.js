'use strict'
// A KafkaJS ZSTD codec on zstd-codec (zstd compiled to WebAssembly/asm.js by Emscripten; no
// native build). @kafkajs/zstd would need node-gyp (cppzst), which a fresh machine may not
// be able to build. Compression embeds the frame content size (Simple API, level 3);
// decompression uses the streaming API so frames without a content size (zstd-jni's and
// librdkafka's streaming output) decode too.
const { ZstdCodec } = require('zstd-codec')

let ready = null
function zstd() {
  if (ready === null) {
    ready = new Promise(resolve => ZstdCodec.run(z => resolve(z)))
  }
  return ready
}

module.exports = () => ({
  async compress(encoder) {
    const z = await zstd()
    const out = new z.Simple().compress(encoder.buffer, 3)
    if (out == null) throw new Error('zstd compression failed')
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength)
  },
  async decompress(buffer) {
    const z = await zstd()
    const out = new z.Streaming().decompress(buffer)
    if (out == null) throw new Error('zstd decompression failed')
    return Buffer.from(out.buffer, out.byteOffset, out.byteLength)
  },
})
