// The bytes and rules of PROTOCOL.md, written from the spec alone (no syncnode code):
// proto3 encoding of the few messages we need, varint-length framing, the chain spec and its
// genesis, header bytes, block hashes and the per-block validity rules.
//
// Every u64 of the wire (heights, timestamps, counts) is a BigInt here: a JS number silently
// loses precision above 2^53, and a decoder must not.

import { blake3 } from '@noble/hashes/blake3.js'
import { bytesToHex, hexToBytes } from '@noble/hashes/utils.js'
import { ed25519 } from '@noble/curves/ed25519.js'

export { bytesToHex, hexToBytes }

/** PROTOCOL.md §3 frame limits, checked before any buffer of that size exists. */
export const MAX_REQUEST_FRAME = 65_536
export const MAX_RESPONSE_FRAME = 16_777_216
/** PROTOCOL.md §1 rule 3. */
export const MAX_PAYLOAD_BYTES = 1_048_576
/** PROTOCOL.md §3 BlocksByRange: `count` from 1 to 1024. */
export const MAX_RANGE_COUNT = 1024n

export const ResponseCode = Object.freeze({
  0: 'OK',
  1: 'INVALID_REQUEST',
  2: 'SERVER_ERROR',
  3: 'RESOURCE_UNAVAILABLE',
  4: 'RATE_LIMITED'
})

const U64_MAX = (1n << 64n) - 1n

export class WireError extends Error {}

// ---------------------------------------------------------------------------------------------
// Varints (unsigned LEB128): used both for protobuf fields and for the frame length prefix.

/** Encodes a u64 (BigInt or safe integer) as unsigned LEB128. */
export function encodeVarint (value) {
  let v = BigInt(value)
  if (v < 0n || v > U64_MAX) throw new WireError(`varint out of u64 range: ${v}`)
  const out = []
  do {
    let byte = Number(v & 0x7fn)
    v >>= 7n
    if (v !== 0n) byte |= 0x80
    out.push(byte)
  } while (v !== 0n)
  return Uint8Array.from(out)
}

/**
 * Decodes an unsigned LEB128 varint at `buf[pos]`. Returns `{ value, next }`, or `null` when the
 * buffer ends before the varint does (the caller may wait for more bytes). At most 10 bytes, and
 * the value must fit in 64 bits.
 */
export function decodeVarint (buf, pos) {
  let value = 0n
  for (let i = 0; i < 10; i++) {
    if (pos + i >= buf.length) return null
    const byte = buf[pos + i]
    value |= BigInt(byte & 0x7f) << BigInt(7 * i)
    if ((byte & 0x80) === 0) {
      if (value > U64_MAX) throw new WireError('varint overflows 64 bits')
      return { value, next: pos + i + 1 }
    }
  }
  throw new WireError('varint longer than 10 bytes')
}

// ---------------------------------------------------------------------------------------------
// Minimal proto3 writer and reader.
//
// Writer: fields in tag order, proto3 defaults (0, empty bytes) omitted - the canonical form the
// vectors use. Reader: accepts fields in any order, keeps the last value of a repeated scalar
// (proto3 "last one wins"), skips unknown fields of every wire type but the deprecated groups.

const WT_VARINT = 0
const WT_I64 = 1
const WT_LEN = 2
const WT_I32 = 5

function concat (parts) {
  const total = parts.reduce((n, p) => n + p.length, 0)
  const out = new Uint8Array(total)
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function key (field, wireType) {
  return encodeVarint((field << 3) | wireType)
}

class Writer {
  parts = []
  uint64 (field, value) {
    if (BigInt(value) !== 0n) this.parts.push(key(field, WT_VARINT), encodeVarint(value))
    return this
  }

  bytes (field, value) {
    if (value.length > 0) this.parts.push(key(field, WT_LEN), encodeVarint(value.length), value)
    return this
  }

  finish () {
    return concat(this.parts)
  }
}

/** Calls `onField(field, wireType, value)` for each field; value is a BigInt or a Uint8Array. */
function readFields (buf, onField) {
  let pos = 0
  while (pos < buf.length) {
    const k = decodeVarint(buf, pos)
    if (k === null) throw new WireError('truncated field key')
    pos = k.next
    const field = Number(k.value >> 3n)
    const wireType = Number(k.value & 7n)
    if (field === 0) throw new WireError('field number 0')
    let value
    switch (wireType) {
      case WT_VARINT: {
        const v = decodeVarint(buf, pos)
        if (v === null) throw new WireError(`truncated varint of field ${field}`)
        value = v.value
        pos = v.next
        break
      }
      case WT_LEN: {
        const len = decodeVarint(buf, pos)
        if (len === null) throw new WireError(`truncated length of field ${field}`)
        const end = len.next + Number(len.value)
        if (len.value > BigInt(buf.length) || end > buf.length) {
          throw new WireError(`field ${field} runs past the end of its message`)
        }
        value = buf.subarray(len.next, end)
        pos = end
        break
      }
      case WT_I64:
      case WT_I32: {
        const width = wireType === WT_I64 ? 8 : 4
        if (pos + width > buf.length) throw new WireError(`truncated fixed field ${field}`)
        value = buf.subarray(pos, pos + width)
        pos += width
        break
      }
      default:
        throw new WireError(`unsupported wire type ${wireType} (field ${field})`)
    }
    onField(field, wireType, value)
  }
}

function expectType (field, got, want) {
  if (got !== want) throw new WireError(`field ${field}: wire type ${got}, expected ${want}`)
}

// Status { genesis_hash=1; head_height=2; head_hash=3; finalized_height=4; finalized_hash=5;
//          earliest_height=6 }

export function encodeStatus (s) {
  return new Writer()
    .bytes(1, s.genesisHash)
    .uint64(2, s.headHeight)
    .bytes(3, s.headHash)
    .uint64(4, s.finalizedHeight)
    .bytes(5, s.finalizedHash)
    .uint64(6, s.earliestHeight)
    .finish()
}

export function decodeStatus (buf) {
  const s = {
    genesisHash: new Uint8Array(0),
    headHeight: 0n,
    headHash: new Uint8Array(0),
    finalizedHeight: 0n,
    finalizedHash: new Uint8Array(0),
    earliestHeight: 0n
  }
  const fields = {
    1: ['genesisHash', WT_LEN],
    2: ['headHeight', WT_VARINT],
    3: ['headHash', WT_LEN],
    4: ['finalizedHeight', WT_VARINT],
    5: ['finalizedHash', WT_LEN],
    6: ['earliestHeight', WT_VARINT]
  }
  readFields(buf, (field, wt, value) => {
    if (!(field in fields)) return // unknown field: skipped
    const [name, type] = fields[field]
    expectType(field, wt, type)
    s[name] = value
  })
  for (const name of ['genesisHash', 'headHash', 'finalizedHash']) {
    if (s[name].length !== 32) throw new WireError(`Status.${name} is ${s[name].length} bytes, not 32`)
  }
  return s
}

// BlocksByRangeRequest { start_height=1; count=2 }

export function encodeRangeRequest (startHeight, count) {
  return new Writer().uint64(1, startHeight).uint64(2, count).finish()
}

// BlockHeader { height=1; parent_hash=2; timestamp_ms=3; payload_hash=4; proposer=5 }
// Block { header=1; payload=2; signature=3 }
// BlocksResponse { code=1; repeated blocks=2; error_message=3 }

function decodeHeader (buf) {
  const h = {
    height: 0n,
    parentHash: new Uint8Array(0),
    timestampMs: 0n,
    payloadHash: new Uint8Array(0),
    proposer: new Uint8Array(0)
  }
  const fields = {
    1: ['height', WT_VARINT],
    2: ['parentHash', WT_LEN],
    3: ['timestampMs', WT_VARINT],
    4: ['payloadHash', WT_LEN],
    5: ['proposer', WT_LEN]
  }
  readFields(buf, (field, wt, value) => {
    if (!(field in fields)) return // unknown field: skipped
    const [name, type] = fields[field]
    expectType(field, wt, type)
    h[name] = value
  })
  const sizes = { parentHash: 32, payloadHash: 32, proposer: 32 }
  for (const [name, size] of Object.entries(sizes)) {
    if (h[name].length !== size) throw new WireError(`BlockHeader.${name} is ${h[name].length} bytes, not ${size}`)
  }
  return h
}

export function decodeBlock (buf) {
  let header = null
  let payload = new Uint8Array(0)
  let signature = new Uint8Array(0)
  readFields(buf, (field, wt, value) => {
    if (field > 3) return
    expectType(field, wt, WT_LEN)
    if (field === 1) header = decodeHeader(value)
    if (field === 2) payload = value
    if (field === 3) signature = value
  })
  if (header === null) throw new WireError('Block without a header')
  if (signature.length !== 64) throw new WireError(`Block.signature is ${signature.length} bytes, not 64`)
  return { header, payload, signature }
}

export function decodeBlocksResponse (buf) {
  let code = 0n
  const blocks = []
  let errorMessage = ''
  readFields(buf, (field, wt, value) => {
    if (field === 1) {
      expectType(field, wt, WT_VARINT)
      code = value
    } else if (field === 2) {
      expectType(field, wt, WT_LEN)
      blocks.push(decodeBlock(value))
    } else if (field === 3) {
      expectType(field, wt, WT_LEN)
      errorMessage = new TextDecoder('utf-8', { fatal: true }).decode(value)
    }
  })
  // An enum value this schema does not know is kept as a number (proto3 open enums).
  const name = ResponseCode[Number(code)] ?? `UNKNOWN(${code})`
  return { code: name, blocks, errorMessage }
}

// ---------------------------------------------------------------------------------------------
// Frames: unsigned LEB128 length, then that many bytes.

export function frame (message) {
  return concat([encodeVarint(message.length), message])
}

/**
 * Reads exactly one frame from `source` (an async iterable of Uint8Array or Uint8ArrayList
 * chunks) and then requires the end of the stream, since a responder writes one frame and
 * closes. The announced length is checked against `max` before it is waited for, and nothing
 * beyond the frame is buffered.
 */
export async function readSingleFrame (source, max) {
  const chunks = []
  let received = 0
  let length = null // { value, start } once the prefix is complete
  for await (const chunk of source) {
    const bytes = chunk instanceof Uint8Array ? chunk : chunk.subarray()
    chunks.push(bytes)
    received += bytes.length
    if (length === null) {
      // The prefix is at most 10 bytes: only those are joined while it is incomplete.
      const head = concat(chunks).subarray(0, 10)
      const v = decodeVarint(head, 0)
      if (v === null) continue
      if (v.value > BigInt(max)) throw new WireError(`frame of ${v.value} bytes exceeds the limit of ${max}`)
      length = { value: Number(v.value), start: v.next }
    }
    if (received > length.start + length.value) {
      throw new WireError(`${received - length.start - length.value} bytes follow the frame`)
    }
  }
  if (length === null) {
    if (received === 0) throw new WireError('stream closed before a frame')
    throw new WireError('stream closed inside the length prefix')
  }
  if (received < length.start + length.value) {
    throw new WireError(`stream ended after ${received - length.start} of ${length.value} frame bytes`)
  }
  return concat(chunks).subarray(length.start)
}

// ---------------------------------------------------------------------------------------------
// The chain (PROTOCOL.md §1).

const SPEC_FIELDS = ['name', 'genesis_timestamp_ms', 'slot_ms', 'finality_depth', 'authorities']

/** Parses and checks a chain spec JSON text. */
export function parseChainSpec (text) {
  const spec = JSON.parse(text)
  if (spec === null || typeof spec !== 'object' || Array.isArray(spec)) throw new Error('chain spec is not a JSON object')
  for (const k of Object.keys(spec)) {
    if (!SPEC_FIELDS.includes(k)) throw new Error(`chain spec: unknown field ${JSON.stringify(k)}`)
  }
  for (const k of SPEC_FIELDS) {
    if (!(k in spec)) throw new Error(`chain spec: missing field ${k}`)
  }
  if (typeof spec.name !== 'string') throw new Error('chain spec: name must be a string')
  // JSON.parse yields doubles: refuse any number it may already have rounded.
  for (const k of ['genesis_timestamp_ms', 'slot_ms', 'finality_depth']) {
    if (!Number.isSafeInteger(spec[k]) || spec[k] < 0) {
      throw new Error(`chain spec: ${k} must be a non-negative integer below 2^53 (got ${spec[k]})`)
    }
  }
  if (spec.slot_ms < 1 || spec.finality_depth < 1) throw new Error('chain spec: slot_ms and finality_depth must be >= 1')
  if (!Array.isArray(spec.authorities) || spec.authorities.length === 0) {
    throw new Error('chain spec: authorities must be a non-empty array')
  }
  const authorities = spec.authorities.map((a, i) => {
    if (typeof a !== 'string' || !/^[0-9a-fA-F]{64}$/.test(a)) throw new Error(`chain spec: authority ${i} is not 64 hex characters`)
    return a.toLowerCase()
  })
  if (new Set(authorities).size !== authorities.length) throw new Error('chain spec: duplicate authorities')
  return { ...spec, authorities }
}

/** The 112 header bytes of PROTOCOL.md §1. */
export function headerBytes (h) {
  const out = new Uint8Array(112)
  const view = new DataView(out.buffer)
  view.setBigUint64(0, BigInt(h.height), false) // big-endian
  out.set(h.parentHash, 8)
  view.setBigUint64(40, BigInt(h.timestampMs), false)
  out.set(h.payloadHash, 48)
  out.set(h.proposer, 80)
  return out
}

export function blockHash (header) {
  return blake3(headerBytes(header))
}

/** The genesis payload, header and hash derived from a parsed chain spec. */
export function genesis (spec) {
  const payloadText = `syncnode-genesis-v1|${spec.name}|${spec.genesis_timestamp_ms}|${spec.slot_ms}|` +
    `${spec.finality_depth}|${spec.authorities.join(',')}`
  const payload = new TextEncoder().encode(payloadText)
  const header = {
    height: 0n,
    parentHash: new Uint8Array(32),
    timestampMs: BigInt(spec.genesis_timestamp_ms),
    payloadHash: blake3(payload),
    proposer: new Uint8Array(32)
  }
  return { payload, header, hash: blockHash(header) }
}

function equal (a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
export { equal as bytesEqual }

/**
 * Checks a block against its parent's facts (rules 1-5 of PROTOCOL.md §1; rule 6 is for gossip
 * only). `parent` is `{ height, hash, timestampMs }` or null when the parent is unknown, in which
 * case only rules 3-5 apply. Genesis (height 0) must instead be the block the spec derives.
 * Returns the block hash; throws with the broken rule.
 */
export function verifyBlock (block, parent, spec, genesisBlock) {
  const h = block.header
  const hash = blockHash(h)
  const at = `block ${h.height} (${bytesToHex(hash)})`
  if (h.height === 0n) {
    if (!equal(hash, genesisBlock.hash)) throw new Error(`${at}: genesis differs from the one the spec derives`)
    if (!equal(block.payload, genesisBlock.payload)) throw new Error(`${at}: genesis payload differs`)
    if (!equal(block.signature, new Uint8Array(64))) throw new Error(`${at}: genesis signature is not 64 zero bytes`)
    return hash
  }
  if (parent !== null) {
    if (h.height !== parent.height + 1n) throw new Error(`${at}: rule 1: height after parent ${parent.height}`)
    if (!equal(h.parentHash, parent.hash)) throw new Error(`${at}: rule 1: parent_hash is not the hash of block ${parent.height}`)
    if (h.timestampMs <= parent.timestampMs) throw new Error(`${at}: rule 2: timestamp not after the parent's`)
  }
  if (block.payload.length > MAX_PAYLOAD_BYTES) throw new Error(`${at}: rule 3: payload of ${block.payload.length} bytes`)
  if (!equal(h.payloadHash, blake3(block.payload))) throw new Error(`${at}: rule 3: payload_hash is not BLAKE3(payload)`)
  const n = BigInt(spec.authorities.length)
  const scheduled = spec.authorities[Number(h.height % n)]
  if (bytesToHex(h.proposer) !== scheduled) throw new Error(`${at}: rule 4: proposer is not authorities[height % ${n}]`)
  // ZIP-215 is the rule PROTOCOL.md states; honest signatures also pass strict RFC 8032, which is
  // checked separately by the caller when asked to.
  if (!ed25519.verify(block.signature, hash, h.proposer, { zip215: true })) {
    throw new Error(`${at}: rule 5: signature does not verify (ZIP-215)`)
  }
  return hash
}

/** Strict RFC 8032 verification (no ZIP-215 leniency): every honest signature passes it too. */
export function verifyStrict (block, hash) {
  return ed25519.verify(block.signature, hash, block.header.proposer, { zip215: false })
}
