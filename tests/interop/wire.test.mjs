// Checks wire.mjs against the protocol's test vectors (testdata/vectors), so that a failure of the
// interop run can be told apart from a bug in this client's own encoding.
// Run: node --test tests/interop/

import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { test } from 'node:test'

import {
  blockHash, bytesToHex, decodeBlock, decodeBlocksResponse, decodeStatus, encodeRangeRequest,
  encodeStatus, frame, genesis, headerBytes, hexToBytes, parseChainSpec, readSingleFrame,
  verifyBlock, verifyStrict
} from './wire.mjs'

const dir = new URL('../../testdata/vectors/', import.meta.url)
const load = (name) => readFileSync(new URL(name, dir), 'utf8')
const spec = parseChainSpec(load('chain_spec.json'))
const messages = JSON.parse(load('messages.json'))
const blocks = JSON.parse(load('blocks.json'))
const g = genesis(spec)

async function * chunks (bytes, size) {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size)
}

test('genesis is derived from the spec as the vectors say', () => {
  const v = JSON.parse(load('genesis.json'))
  assert.equal(new TextDecoder().decode(g.payload), v.payload_utf8)
  assert.equal(bytesToHex(headerBytes(g.header)), v.header_bytes)
  assert.equal(bytesToHex(g.hash), v.hash)
})

test('status encodes to the vector bytes and decodes back', () => {
  const v = messages.status
  const f = v.fields
  const status = {
    genesisHash: hexToBytes(f.genesis_hash),
    headHeight: BigInt(f.head_height),
    headHash: hexToBytes(f.head_hash),
    finalizedHeight: BigInt(f.finalized_height),
    finalizedHash: hexToBytes(f.finalized_hash),
    earliestHeight: BigInt(f.earliest_height)
  }
  assert.equal(bytesToHex(encodeStatus(status)), v.protobuf)
  assert.equal(bytesToHex(frame(encodeStatus(status))), v.frame)
  assert.deepEqual(decodeStatus(hexToBytes(v.protobuf)), status)
})

test('range request encodes to the vector bytes', () => {
  const v = messages.blocks_by_range_request
  assert.equal(bytesToHex(frame(encodeRangeRequest(BigInt(v.fields.start_height), BigInt(v.fields.count)))), v.frame)
})

test('range response frame decodes to valid, linked blocks 2..4', async () => {
  const v = messages.blocks_by_range_response
  // Fed in 7-byte chunks: the reader must reassemble the prefix and the body.
  const body = await readSingleFrame(chunks(hexToBytes(v.frame), 7), 1 << 24)
  const resp = decodeBlocksResponse(body)
  assert.equal(resp.code, 'OK')
  assert.deepEqual(resp.blocks.map((b) => b.header.height), [2n, 3n, 4n])
  let parent = { height: 1n, hash: hexToBytes(blocks[0].hash), timestampMs: BigInt(blocks[0].timestamp_ms) }
  for (const b of resp.blocks) {
    const hash = verifyBlock(b, parent, spec, g)
    assert.ok(verifyStrict(b, hash))
    parent = { height: b.header.height, hash, timestampMs: b.header.timestampMs }
  }
})

test('every vector block verifies and hashes as given', () => {
  let parent = { height: 0n, hash: g.hash, timestampMs: g.header.timestampMs }
  for (const v of blocks) {
    const b = decodeBlock(hexToBytes(v.block_protobuf))
    assert.equal(bytesToHex(headerBytes(b.header)), v.header_bytes)
    assert.equal(bytesToHex(blockHash(b.header)), v.hash)
    verifyBlock(b, parent, spec, g)
    parent = { height: b.header.height, hash: hexToBytes(v.hash), timestampMs: b.header.timestampMs }
  }
})

test('every invalid vector block is rejected for its rule', () => {
  const byHeight = new Map(blocks.map((v) => [BigInt(v.height), v]))
  for (const v of JSON.parse(load('invalid_blocks.json'))) {
    let b
    if (v.block_protobuf === null) {
      // The oversize variant ships no bytes: block 3 with a payload one byte over 1 MiB.
      b = decodeBlock(hexToBytes(byHeight.get(3n).block_protobuf))
      b.payload = new Uint8Array(1_048_577)
    } else {
      b = decodeBlock(hexToBytes(v.block_protobuf))
    }
    const p = byHeight.get(2n) // every variant is of block 3, whose parent is block 2
    const parent = { height: 2n, hash: hexToBytes(p.hash), timestampMs: BigInt(p.timestamp_ms) }
    assert.throws(() => verifyBlock(b, parent, spec, g), new RegExp(`rule ${v.rule}`), v.why)
  }
})

test('error response decodes its code and message', () => {
  const v = messages.error_response
  const resp = decodeBlocksResponse(hexToBytes(v.protobuf))
  assert.equal(resp.code, v.fields.code)
  assert.equal(resp.errorMessage, v.fields.error_message)
})

test('frames over the limit, trailing bytes and early ends are refused', async () => {
  await assert.rejects(readSingleFrame(chunks(hexToBytes('8180808008'), 3), 65_536), /exceeds the limit/)
  await assert.rejects(readSingleFrame(chunks(hexToBytes('0408021003ff'), 2), 65_536), /follow the frame/)
  await assert.rejects(readSingleFrame(chunks(hexToBytes('04080210'), 2), 65_536), /ended after 3 of 4/)
  await assert.rejects(readSingleFrame(chunks(new Uint8Array(0), 1), 65_536), /before a frame/)
})
