//! The sans-IO sync engine of syncnode: it decides which blocks to fetch from which peer, in what
//! order to import them, whom to charge when something goes wrong, and whether we are in sync.
//!
//! # Shape
//! [`SyncEngine`] is a plain state machine, like `quinn-proto` beside `quinn`. It owns no socket,
//! no task and no clock: the node calls it with events, each stamped with the time (`now_ms`), and
//! drains the [`Action`]s it queues with [`SyncEngine::poll_action`]:
//! - events in: a peer's Status ([`SyncEngine::peer_status`]), a disconnection, a range or root
//!   response (already checked against rules 3–5 by the node's verification pool) or its failure,
//!   an import's result, a gossiped block, and [`SyncEngine::tick`] as time passes;
//! - actions out: send this request to that peer (each with its own timeout), import these blocks,
//!   penalise that peer, the state or the sync target changed, backfill is complete.
//!
//! The engine does no signature checks (the node's verification pool does) and no I/O; per event it
//! does work proportional to the window and the number of peers, plus hashing headers it links.
//!
//! Inside, the engine is a router of chains. One batch machine (`batch.rs`) drives every batch
//! through its life; its state is private and changes only through transitions that refuse a
//! wrong state. A chain of batches (`chain.rs`) holds a window of them and imports them in order;
//! what differs by direction (which batch imports first, where the next is cut, how a complete
//! batch links to the chain's boundary, what a contested answer proves) is supplied by the
//! direction: forward sync (`forward.rs`) and backfill (`backfill.rs`). The router (`router.rs`)
//! holds the peers, the requests and imports in flight and the actions, and carries out what a
//! chain reports; the engine (`engine.rs`) routes each event to the chain or parent lookup
//! (`lookup.rs`) that owns it. Modules depend downward only: engine → router → chains → batch.
//!
//! # Forward sync
//! The *target* is the highest head a peer credibly claims (the rule is in `peers.rs`): each peer
//! counts for the larger of what it served us on this connection and its latest Status's head,
//! the latter only while that Status is fresh and only up to its *cap*. A peer is capped below a
//! height when it answered empty there, or refused, erred or reset three range requests in a row
//! inside its claim (not charged: refusing is allowed; it is the claim that is capped); blocks it
//! delivers above the cap lift it, its word (a Status naming another head) only once per
//! `CAP_HOLD_MS`, and the cap outlasts a reconnect. A peer refreshing its Status lower, or letting it go
//! stale, no longer holds the target up; a lower claim never lowers another peer's count, nor
//! the target below what a peer served. A peer whose data was proven wrong does not count.
//!
//! Heights `tip + 1 ..= target` are cut into batches of `batch_size` blocks, or fewer when blocks
//! are large: a batch holds about `window_bytes / window_batches` at the average block size seen
//! (the largest possible until blocks arrive). Where the chain's blocks grow well past that average,
//! a batch can still outgrow the window: when the window cannot take the rest of an answer, the
//! batch is split after the blocks it holds, so the batch the import waits for shrinks to what fits
//! (down to one block) instead of waiting forever.
//! At most `window_batches` batches exist at once and their downloaded blocks never exceed
//! `window_bytes`: download runs ahead of import by a bounded amount, whatever the chain's length.
//! Each waiting batch is
//! requested from the best peer with room believed to hold its first missing height
//! (`earliest_height <= start <= head_height`, less its cap): the one that failed it least, then
//! one that holds all of it, then the one that would answer soonest by its measured link and what
//! it already holds (a peer not measured yet counts as free, but the batch import waits for goes
//! to a measured peer when there is one), ties broken at random. A peer that holds no request and
//! was not asked for half a second counts as not measured again for the other batches, so a link
//! measured slow once (at start-up, among many new peers) is measured anew instead of never.
//! A peer holding only the bottom of a batch answers that part and the batch keeps it. The engine ranks by what it saw, not by scores: the one score book is the
//! network's, moved by the engine's [`Action::Penalise`] (charges, and a credit for each
//! imported batch's suppliers).
//! Each peer's link is measured (`pace.rs`): its round trip and the throughput of its answers, as
//! EWMAs of the answers' timing. A peer new to us holds one request of at most 64 blocks; once
//! measured, its requests ask for about half a second of its link, and it holds more of them at
//! once (up to `max_requests_per_peer`, each on its own stream) while the bytes they are expected
//! to bring stay below four round trips of its throughput (each answer pays round trips of its
//! own: its stream's negotiation, its muxer window), so a distant link never idles waiting for
//! our next request. A request leaves the peer's load when its answer arrives
//! ([`SyncEngine::response_received`]), so our verification overlaps its next answer, and no
//! deadline runs during that verification. A request's deadline comes from its peer's link: three
//! times a round trip plus the transfer of its bytes and of those the peer still owes us, at
//! least 1.5 s and at most the configured deadline (`request_timeout_ms`, the protocol's 10 s,
//! doubled per failure of the batch), which also applies to a peer not measured yet. Running out
//! a deadline shorter than the configured one is no breach of the protocol: the peer is not
//! charged, but rests, its throughput estimate is halved and its next request gets the configured
//! deadline; only running out that one is charged as a timeout. When the request of the batch
//! import waits for (forward sync's; backfill's while forward sync is not behind) is late beyond
//! its peer's own norm (twice what its link expects for what it owes at today's block-size
//! estimate; for a peer not measured yet, four times what the best measured peer would take),
//! the same blocks are asked of a second peer: one such hedge at a time, within the window and a byte budget (a
//! batch's share of the window, refilled by an eighth of the bytes answers bring). The first
//! answer with blocks wins; the other request is forgotten, and neither peer is charged for it
//! (a primary outrun by its hedge rests as after a late deadline). A peer whose request timed
//! out rests for three request timeouts (until it answers again): it gets no batch while another
//! peer serving the range is not resting, even a busy one, since a batch stuck for a whole timeout
//! holds up in-order import; with only resting peers, work still goes to them. A peer whose last
//! request was refused, erred or reset rests the same way until it delivers blocks again.
//!
//! A short answer is legal (a server may pace its output): the batch keeps what came and asks for
//! the rest, and nothing is charged or capped. An empty forward answer inside the range the
//! peer's own Status promises costs it a small `BrokenPromise` (never a ban alone); outside it,
//! nothing. An empty backfill answer (the peer's earliest height rose) costs nothing and caps no
//! head: the peer is not asked that low until its fresh Status, which is asked for. A failed request (timeout, error, invalid data) charges what the
//! peer did. The batch goes at once to a free peer that has not failed it, if there is one; it
//! waits an exponential backoff with jitter (at least `retry_min_delay_ms`) only for the peers
//! that failed it, and after a failure of ours (a backoff keeps a retry from hammering the same
//! peer, not a fresh one from helping, while in-order import waits); each retry's deadline is longer, and a
//! peer that failed a batch `max_attempts_per_peer` times is not asked for it again. Every request
//! carries a deadline in the engine's clock and `tick` fires it, so a silent peer's batch moves on.
//!
//! Batches are imported strictly in order: a complete batch is offered (as one [`Action::Import`])
//! only when its first block's parent hash is the hash of the last block offered before it, so
//! every import links by hash to the local head. When it does not link to blocks the store has
//! not yet confirmed, it waits for the store's word on them: they may break a rule only the store
//! checks, and then it is they that were wrong. When it does not link to the confirmed head, its
//! supplier follows another fork, and a *fork search* starts (imports still pending are forgotten; the store's word
//! on them comes back with the search's imports): the chain of batches restarts at our finalized block (head
//! minus the finality depth; never lower, since a chain that conflicts with finality is invalid
//! for us), pinned to that peer, and fetches its chain from there. The store skips the blocks we
//! share and its fork choice decides: a longer chain becomes canonical (a reorg) and forward sync
//! goes on from its head; one no longer than ours is stored aside
//! ([`ImportError::SideChain`]) and, once the peer's chain is fetched, forward sync restarts from
//! the store's head, which never moved. A search ends too when its peer leaves, cannot serve the
//! next block or used up its attempts on a batch; a peer is searched at most once per head of ours.
//! Being on another fork, longer or shorter, or behind, costs nothing; a fork whose first block
//! does not hang off our finalized block conflicts with finality and costs `ProvenWrong`, and a
//! block the store rejects costs `InvalidData`. A failed import for a local reason is retried later
//! and charges nobody.
//!
//! The state is `Synced` when no peer is ahead, `Syncing` while blocks arrive, `Stalled` when peers
//! are ahead but nothing arrived for `stall_after_ms`, and `Backfilling` when forward sync is done
//! but backfill is not. At start-up our head is unchecked: the state is `Syncing` until a peer's
//! Status arrives, or until `alone_after_ms` passes with none (a node alone counts as synced), so a
//! producer never builds on a head its peers may have left behind.
//!
//! # Following the head, and parent lookups
//! A gossiped block whose parent is the tip is imported at once, also while batches are pending
//! (the importer keeps the order, and the batches are cut again above it). One whose parent is
//! unknown starts a bounded lookup of its ancestors by root (see `lookup.rs`), which asks for
//! them only while no batch is pending; one above the range being fetched waits in a lookup, and
//! imports when range sync reaches it. A lookup that reaches our tip's height without meeting our
//! chain has found a fork: when its top is above our tip, its senders are asked for a fresh Status
//! at once, so their longer head becomes the target and its first batch, which does not link,
//! starts a fork search (above); otherwise (equal or shorter: the first seen stays) it is dropped.
//! Nobody is charged for either.
//!
//! # Backfill
//! A node started from a checkpoint fetches history downward from its lowest block L, accepting a
//! batch only if its top block's hash is the parent hash of the block above it, with its own window,
//! only while forward sync is not behind. Reaching the floor (or genesis) is terminal: one
//! [`Action::BackfillComplete`], then no more backfill work ever (see `backfill.rs`).
//!
//! # What the node must do
//! - Perform [`Action::Import`]s in the order emitted (each as one atomic commit) and report every
//!   result with [`SyncEngine::import_result`], in that order. Forward imports are pipelined: the
//!   next may be emitted before the previous one's result. A forward `Ok` means the store's head
//!   is now the import's last block; when the store's head moves by other means (a produced
//!   block), call [`SyncEngine::local_head_changed`].
//! - Verify rules 3–5 of every response before handing it over ([`SyncEngine::range_response`],
//!   [`SyncEngine::root_response`]) or report [`SyncEngine::response_invalid`].
//! - Route every failure of the engine's requests through [`SyncEngine::request_failed`] and apply
//!   the engine's [`Action::Penalise`]s (the engine does not charge twice, the node should not
//!   either); call [`SyncEngine::tick`] at [`SyncEngine::next_wakeup`] (every time a tick can
//!   matter; ticking more often does no harm).
//! - Carry out [`Action::RequestStatus`]: the peer's answer comes back as a
//!   [`SyncEngine::peer_status`].
//! - Build the engine with a valid [`SyncConfig`]: [`SyncEngine::new`] returns the
//!   [`ConfigError`] of one that is not.
//!
//! # Invariants (asserted in debug builds after every event, and by the simulator)
//! - downloaded, not yet imported blocks stay within the window, in bytes and in batches;
//! - at most `max_requests_per_peer` requests in flight per peer;
//! - forward imports are emitted in consecutive height order, each linking to the one before
//!   (a fork search's first import starts afresh above our finalized block);
//! - every map is bounded: batches by the windows, lookups by `max_lookups` and their depth,
//!   peers by `max_peers`, the peers whose fork was searched by 64;
//! - a peer is never charged for our failures, nor for lacking what its Status did not promise.

#![forbid(unsafe_code)]

mod backfill;
mod batch;
mod chain;
pub mod config;
mod engine;
mod events;
mod forward;
mod jitter;
mod lookup;
mod pace;
mod peers;
mod router;

pub use config::{ConfigError, SyncConfig};
pub use engine::SyncEngine;
pub use events::{
    Action, BackfillStart, Direction, EngineStats, ImportError, ImportId, LocalChain, PeerStatus, PeerView,
    RequestFailure, RequestId, SyncState,
};
pub use peers::PeerKey;
pub use syncnode_proto::peer_score;
pub use syncnode_proto::peer_score::{PeerAction, PeerScores, ScoreConfig, Verdict};

#[cfg(test)]
mod tests;
