#!/usr/bin/env node
// Interoperability client: js-libp2p (an independent libp2p implementation) against a syncnode.
//
//   node client.mjs <multiaddr>/p2p/<peer id> <chain-spec.json> <start> <count> [--timeout-ms N]
//
// Dials the node over TCP + Noise + Yamux, runs identify and ping, exchanges Status both ways,
// fetches heights start..start+count-1 with as many BlocksByRange requests as it takes, checks
// every block by PROTOCOL.md, then probes two edge cases of BlocksByRange. Prints one JSON
// summary line on stdout and exits 0, or prints `interop FAILED: <why>` on stderr and exits 1
// (2 for bad usage). The whole run is bounded by --timeout-ms (default 30 s).

import './es2024.mjs' // first: libp2p needs Promise.withResolvers, absent from Node.js 20

import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

import {
  MAX_RANGE_COUNT, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, bytesEqual, bytesToHex, decodeBlocksResponse,
  decodeStatus, encodeRangeRequest, encodeStatus, frame, genesis, parseChainSpec, readSingleFrame,
  verifyBlock, verifyStrict
} from './wire.mjs'

const STATUS_PROTOCOL = '/syncnode/status/1'
const RANGE_PROTOCOL = '/syncnode/blocks_by_range/1'
const BLOCKS_BY_ROOT_PROTOCOL = '/syncnode/blocks_by_root/1'
const PING_PROTOCOL = '/ipfs/ping/1.0.0'
const IDENTIFY_PROTOCOL_VERSION = '/syncnode/1.0.0'
/** PROTOCOL.md §3: "A responder answers within 10 s". */
const RESPONSE_DEADLINE_MS = 10_000

class Failure extends Error {}
function check (condition, message) {
  if (!condition) throw new Failure(message)
}

function usage (message) {
  process.stderr.write(`${message}\nusage: node client.mjs <multiaddr>/p2p/<peer id> <chain-spec.json> <start> <count> [--timeout-ms N]\n`)
  process.exit(2)
}

function parseArgs (argv) {
  const positional = []
  let timeoutMs = 30_000
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--timeout-ms') {
      timeoutMs = Number(argv[++i])
      if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) usage('--timeout-ms takes a positive integer')
    } else {
      positional.push(argv[i])
    }
  }
  if (positional.length !== 4) usage('expected 4 arguments')
  const [addr, specPath, startText, countText] = positional
  if (!/^\d+$/.test(startText) || !/^[1-9]\d*$/.test(countText)) usage('start must be >= 0 and count >= 1 (decimal)')
  const peerMatch = /\/p2p\/([^/]+)$/.exec(addr)
  if (peerMatch === null) usage('the multiaddr must end in /p2p/<peer id>')
  return { addr, peerId: peerMatch[1], specPath, start: BigInt(startText), count: BigInt(countText), timeoutMs }
}

/** A signal that aborts after the response deadline or when the whole run is aborted. */
function deadline (run) {
  return AbortSignal.any([run, AbortSignal.timeout(RESPONSE_DEADLINE_MS)])
}

/**
 * One request/response exchange (PROTOCOL.md §3): open a stream for `protocol`, write the
 * request frame, close our write side (this is how the responder knows the request is whole),
 * then read exactly one response frame followed by the end of the stream.
 */
async function exchange (connection, protocol, request, signal, what = protocol) {
  const stream = await connection.newStream(protocol, { signal })
  try {
    if (!stream.send(frame(request))) await stream.onDrain({ signal })
    await stream.close({ signal })
    return await readSingleFrame(abortable(stream, signal), MAX_RESPONSE_FRAME)
  } catch (err) {
    stream.abort(err instanceof Error ? err : new Error(String(err)))
    throw new Failure(`${what}: ${err.message ?? err}`)
  }
}

/** Iterates `stream`, failing as soon as `signal` aborts (a stalled responder). */
async function * abortable (stream, signal) {
  signal.throwIfAborted()
  const onAbort = () => stream.abort(new Error('deadline passed'))
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    for await (const chunk of stream) yield chunk
    signal.throwIfAborted()
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

function statusJson (s) {
  return {
    genesis_hash: bytesToHex(s.genesisHash),
    head_height: Number(s.headHeight),
    head_hash: bytesToHex(s.headHash),
    finalized_height: Number(s.finalizedHeight),
    earliest_height: Number(s.earliestHeight)
  }
}

async function main () {
  const args = parseArgs(process.argv.slice(2))
  const run = new AbortController()
  const timer = setTimeout(() => run.abort(new Failure(`overall timeout of ${args.timeoutMs} ms`)), args.timeoutMs)
  const spec = parseChainSpec(readFileSync(args.specPath, 'utf8'))
  const gen = genesis(spec)
  // Our own Status: a node holding genesis only. Its genesis hash is what syncnode compares.
  const ownStatus = {
    genesisHash: gen.hash,
    headHeight: 0n,
    headHash: gen.hash,
    finalizedHeight: 0n,
    finalizedHash: gen.hash,
    earliestHeight: 0n
  }

  const node = await createLibp2p({
    addresses: { listen: [] }, // dial only: syncnode reaches us over the connection we open
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: {
      // Identify is run explicitly below, so its result is the one checked.
      identify: identify({ runOnConnectionOpen: false }),
      ping: ping()
    }
  })

  // syncnode sends its Status as soon as the connection is up (PROTOCOL.md §3 Status): answer
  // it like a peer would, and keep what it said to check it.
  let inboundStatus
  const inboundStatusSeen = new Promise((resolve, reject) => { inboundStatus = { resolve, reject } })
  await node.handle(STATUS_PROTOCOL, async (stream) => {
    try {
      const theirs = decodeStatus(await readSingleFrame(abortable(stream, deadline(run.signal)), MAX_REQUEST_FRAME))
      if (!stream.send(frame(encodeStatus(ownStatus)))) await stream.onDrain({ signal: run.signal })
      await stream.close({ signal: run.signal })
      inboundStatus.resolve(theirs)
    } catch (err) {
      stream.abort(err instanceof Error ? err : new Error(String(err)))
      inboundStatus.reject(new Failure(`inbound ${STATUS_PROTOCOL}: ${err.message ?? err}`))
    }
  })
  inboundStatusSeen.catch(() => {}) // awaited below; not an unhandled rejection before then

  try {
    const summary = await interop(node, args, spec, gen, ownStatus, inboundStatusSeen, run.signal)
    process.stdout.write(JSON.stringify(summary) + '\n')
  } catch (err) {
    // An operation cut short by the overall timeout fails with a bare AbortError: say why.
    throw run.signal.aborted ? run.signal.reason : err
  } finally {
    clearTimeout(timer)
    await Promise.race([node.stop(), new Promise((resolve) => setTimeout(resolve, 2_000))])
  }
}

async function interop (node, args, spec, gen, ownStatus, inboundStatusSeen, signal) {
  // Transport: TCP + Noise + Yamux. Noise authenticates the remote key against the peer id in
  // the multiaddr, so reaching here means the node is who the address says.
  const dialed = performance.now()
  const connection = await node.dial(multiaddr(args.addr), { signal })
  const connectMs = Math.round(performance.now() - dialed)
  check(connection.remotePeer.toString() === args.peerId, `connected to ${connection.remotePeer}, not ${args.peerId}`)
  check(connection.multiplexer === '/yamux/1.0.0', `muxer is ${connection.multiplexer}, not yamux`)
  check(connection.encryption === '/noise', `encryption is ${connection.encryption}, not noise`)

  // Identify: PROTOCOL.md §2 fixes the protocol version and the agent's form.
  const id = await node.services.identify.identify(connection, { signal: deadline(signal) })
  check(id.protocolVersion === IDENTIFY_PROTOCOL_VERSION,
    `identify protocolVersion is ${JSON.stringify(id.protocolVersion)}, not ${IDENTIFY_PROTOCOL_VERSION}`)
  check(typeof id.agentVersion === 'string' && id.agentVersion.startsWith('syncnode/'),
    `identify agentVersion is ${JSON.stringify(id.agentVersion)}, not syncnode/<version>`)
  for (const p of [STATUS_PROTOCOL, RANGE_PROTOCOL, BLOCKS_BY_ROOT_PROTOCOL, PING_PROTOCOL]) {
    check(id.protocols.includes(p), `identify does not list ${p} (lists ${id.protocols.join(', ')})`)
  }

  // Ping: one round trip on the same connection.
  const rttMs = await node.services.ping.ping(connection.remotePeer, { signal: deadline(signal) })
  check(Number.isFinite(rttMs) && rttMs >= 0, `ping returned ${rttMs}`)

  // Status, asked by us.
  const remote = decodeStatus(await exchange(connection, STATUS_PROTOCOL, encodeStatus(ownStatus), deadline(signal)))
  check(bytesEqual(remote.genesisHash, gen.hash),
    `remote genesis ${bytesToHex(remote.genesisHash)} is not ${bytesToHex(gen.hash)} derived from the spec`)
  check(remote.finalizedHeight <= remote.headHeight, 'remote Status: finalized_height above head_height')
  check(remote.earliestHeight <= remote.headHeight, 'remote Status: earliest_height above head_height')

  // Status, asked by syncnode on connect: it must have come, with the same genesis.
  const inbound = await Promise.race([
    inboundStatusSeen,
    new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Failure(`syncnode sent no Status within ${RESPONSE_DEADLINE_MS} ms of connecting`)), RESPONSE_DEADLINE_MS)
      t.unref()
    })
  ])
  check(bytesEqual(inbound.genesisHash, gen.hash), 'inbound Status carries another genesis hash')

  // Blocks: start..start+count-1, in requests of at most 1024. A response may stop early (at the
  // head, at a gap, at the frame limit), never skip: the next request continues where it stopped.
  const end = args.start + args.count // exclusive
  check(end - 1n <= remote.headHeight, `asked up to ${end - 1n} but the remote head is ${remote.headHeight}`)
  check(args.start >= remote.earliestHeight, `asked from ${args.start} but the remote serves from ${remote.earliestHeight}`)
  let parent = args.start === 1n ? { height: 0n, hash: gen.hash, timestampMs: gen.header.timestampMs } : null
  let next = args.start
  let requests = 0
  let verified = 0
  let strict = 0
  let lastHash = null
  while (next < end) {
    const want = end - next < MAX_RANGE_COUNT ? end - next : MAX_RANGE_COUNT
    const resp = decodeBlocksResponse(await exchange(connection, RANGE_PROTOCOL, encodeRangeRequest(next, want), deadline(signal),
      `${RANGE_PROTOCOL} start ${next} count ${want}`))
    requests++
    check(resp.code === 'OK', `range ${next}+${want}: ${resp.code} ${JSON.stringify(resp.errorMessage)}`)
    check(resp.errorMessage === '', `range ${next}+${want}: OK with error_message ${JSON.stringify(resp.errorMessage)}`)
    check(resp.blocks.length > 0,
      `range ${next}+${want}: no blocks, though ${next} lies in the served range [${remote.earliestHeight}, ${remote.headHeight}]`)
    check(BigInt(resp.blocks.length) <= want, `range ${next}+${want}: ${resp.blocks.length} blocks, more than asked`)
    for (const block of resp.blocks) {
      check(block.header.height === next, `range response holds height ${block.header.height} where ${next} was due`)
      let hash
      try {
        hash = verifyBlock(block, parent, spec, gen)
      } catch (err) {
        throw new Failure(err.message)
      }
      // Honest signatures verify under strict RFC 8032 as well as ZIP-215.
      if (block.header.height !== 0n) {
        check(verifyStrict(block, hash), `block ${next}: signature fails strict RFC 8032 verification`)
        strict++
      }
      parent = { height: block.header.height, hash, timestampMs: block.header.timestampMs }
      lastHash = hash
      verified++
      next++
      // Signature checks are CPU-bound: yield now and then so that this node keeps answering
      // the remote's pings and flow-control frames instead of stalling for seconds.
      if (verified % 32 === 0) await new Promise((resolve) => setImmediate(resolve))
    }
    signal.throwIfAborted()
  }
  if (end - 1n === remote.headHeight) {
    check(bytesEqual(lastHash, remote.headHash), 'the last block fetched is not the head_hash of the remote Status')
  }

  // Edge cases of BlocksByRange (last: the first may cost us score).
  const beyond = decodeBlocksResponse(await exchange(connection, RANGE_PROTOCOL,
    encodeRangeRequest(remote.headHeight + 1n, 1n), deadline(signal), `${RANGE_PROTOCOL} above the head`))
  check(beyond.code === 'OK' && beyond.blocks.length === 0,
    `range above the head: expected OK with no blocks, got ${beyond.code} with ${beyond.blocks.length}`)
  const invalid = decodeBlocksResponse(await exchange(connection, RANGE_PROTOCOL, encodeRangeRequest(args.start, 0n), deadline(signal),
    `${RANGE_PROTOCOL} count 0`))
  check(invalid.code === 'INVALID_REQUEST' && invalid.blocks.length === 0,
    `range with count 0: expected INVALID_REQUEST, got ${invalid.code} with ${invalid.blocks.length} blocks`)

  return {
    ok: true,
    peer_id: args.peerId,
    agent_version: id.agentVersion,
    protocol_version: id.protocolVersion,
    rtt_ms: rttMs,
    connect_ms: connectMs,
    genesis_hash: bytesToHex(gen.hash),
    remote_status: statusJson(remote),
    inbound_status: statusJson(inbound),
    range: { start: Number(args.start), count: Number(args.count), requests },
    blocks_verified: verified,
    strict_signatures: strict,
    last_hash: bytesToHex(lastHash),
    edge_cases: { above_head: beyond.code, count_zero: invalid.code, count_zero_message: invalid.errorMessage }
  }
}

const started = performance.now()
main().then(
  () => process.exit(0),
  (err) => {
    let why
    if (err instanceof Failure) why = err.message
    else if (err instanceof Error) why = err.stack ?? err.message
    else if (err instanceof Event) why = `event ${err.type}${err.error ? `: ${err.error.stack ?? err.error}` : ''}`
    else why = String(err)
    process.stderr.write(`interop FAILED after ${Math.round(performance.now() - started)} ms: ${why}\n`)
    process.exit(1)
  }
)
