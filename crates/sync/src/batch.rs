//! The batch machine: a fixed range of heights fetched by range requests, for every chain of
//! batches alike (forward sync, backfill).
//!
//! A batch's state is private and moves only through its transitions, each of which refuses a
//! wrong state with a [`WrongState`] (the caller drops the event; it never panics):
//!
//! ```text
//!   Waiting --download_started--> Downloading --answered--> Waiting | Complete
//!      ^                              |  \--download_failed--> Waiting (backoff)
//!      |                              \-----contested--------> Waiting (backoff, emptied)
//!   Complete --import_started--> Importing --imported--> Imported (removed by its chain)
//!      \--link_failed--> Waiting        |--import_failed--> Complete
//!                                       \--import_rejected--> Waiting (backoff, emptied)
//! ```
//!
//! `evicted` (window pressure) and `shrunk` (a lower target or a split) apply to any batch that is
//! not importing. A short answer leaves the batch part-filled and the rest is asked for from
//! `next_height()`. Each run of blocks remembers which peer supplied it, so when data is
//! contradicted the right peer is charged.

use std::collections::BTreeMap;

use syncnode_types::validity::check_link;
use syncnode_types::{Block, Height};

use crate::config::SyncConfig;
use crate::events::{ImportId, RequestId};
use crate::jitter::Jitter;

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Needs (more) blocks; may be requested from `not_before_ms` on.
    Waiting { not_before_ms: u64 },
    /// A request for its missing part is out.
    Downloading { id: RequestId },
    /// Every block is here, waiting for the batches before it.
    Complete,
    /// Offered to the node for import; waiting for the result.
    Importing { id: ImportId },
    /// The node confirmed the import: the batch's chain drops it.
    Imported,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Waiting { .. } => "waiting",
            State::Downloading { .. } => "downloading",
            State::Complete => "complete",
            State::Importing { .. } => "importing",
            State::Imported => "imported",
        }
    }
}

/// A transition asked of a batch in a state it does not apply to (an event for another request or
/// import, or a bug). Nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("batch at {start}: `{transition}` refused while {state}")]
pub(crate) struct WrongState {
    pub start: Height,
    pub transition: &'static str,
    pub state: &'static str,
}

/// Heights `start..=end`, the blocks downloaded so far, who sent them, and where it is in its life.
#[derive(Debug, Clone)]
pub(crate) struct Batch<P> {
    start: Height,
    end: Height,
    /// Blocks at `start, start+1, ...`, chained by parent hash.
    blocks: Vec<Block>,
    /// Sum of [`Block::size_bytes`] of `blocks`.
    bytes: usize,
    /// Runs of `blocks`: (peer, how many consecutive blocks it supplied), bottom first.
    suppliers: Vec<(P, usize)>,
    state: State,
    /// Failed attempts so far: drives the backoff and the growing timeout.
    failures: u32,
    /// Failed attempts per peer: a peer at `max_attempts_per_peer` is not asked again.
    peer_failures: BTreeMap<P, u32>,
}

impl<P: Clone + Ord> Batch<P> {
    pub(crate) fn new(start: Height, end: Height, now_ms: u64) -> Self {
        Batch {
            start,
            end,
            blocks: Vec::new(),
            bytes: 0,
            suppliers: Vec::new(),
            state: State::Waiting {
                not_before_ms: now_ms,
            },
            failures: 0,
            peer_failures: BTreeMap::new(),
        }
    }

    // ----- what it is -----

    pub(crate) fn start(&self) -> Height {
        self.start
    }

    pub(crate) fn end(&self) -> Height {
        self.end
    }

    pub(crate) fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn peer_failures(&self) -> &BTreeMap<P, u32> {
        &self.peer_failures
    }

    /// First height not yet downloaded.
    pub(crate) fn next_height(&self) -> Height {
        self.start.saturating_add(self.blocks.len() as u64)
    }

    /// Blocks still missing.
    pub(crate) fn missing(&self) -> u64 {
        self.end.saturating_add(1).saturating_sub(self.next_height())
    }

    pub(crate) fn is_full(&self) -> bool {
        self.next_height() > self.end
    }

    /// Whether it waits for a request and its backoff is over.
    pub(crate) fn is_ready(&self, now_ms: u64) -> bool {
        matches!(self.state, State::Waiting { not_before_ms } if not_before_ms <= now_ms) && !self.is_full()
    }

    /// When its backoff ends, if it waits for a request.
    pub(crate) fn ready_at(&self) -> Option<u64> {
        match self.state {
            State::Waiting { not_before_ms } => Some(not_before_ms),
            _ => None,
        }
    }

    pub(crate) fn is_downloading(&self) -> bool {
        matches!(self.state, State::Downloading { .. })
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.state == State::Complete
    }

    pub(crate) fn is_importing(&self) -> bool {
        matches!(self.state, State::Importing { .. })
    }

    /// Whether it is still downloading or waiting to (neither complete nor importing).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Waiting { .. } | State::Downloading { .. })
    }

    /// The request out for its missing part, if one is.
    pub(crate) fn request(&self) -> Option<RequestId> {
        match self.state {
            State::Downloading { id } => Some(id),
            _ => None,
        }
    }

    /// Whether request `id` for blocks from `start` is the one it waits for.
    pub(crate) fn awaits(&self, id: RequestId, start: Height) -> bool {
        self.state == (State::Downloading { id }) && self.next_height() == start
    }

    /// The import it waits for, if importing.
    pub(crate) fn import_id(&self) -> Option<ImportId> {
        match self.state {
            State::Importing { id } => Some(id),
            _ => None,
        }
    }

    /// The peer that supplied `blocks[index]`.
    pub(crate) fn supplier_of(&self, index: usize) -> Option<&P> {
        let mut seen = 0usize;
        for (peer, n) in &self.suppliers {
            seen += n;
            if index < seen {
                return Some(peer);
            }
        }
        None
    }

    /// The peer that supplied the block at `height`, if the batch holds it.
    pub(crate) fn supplier_at(&self, height: Height) -> Option<&P> {
        let index = usize::try_from(height.checked_sub(self.start)?).ok()?;
        self.supplier_of(index)
    }

    /// The peer that supplied its top block.
    pub(crate) fn top_supplier(&self) -> Option<&P> {
        self.supplier_of(self.blocks.len().checked_sub(1)?)
    }

    /// Every peer that supplied part of the batch, without repeats.
    pub(crate) fn all_suppliers(&self) -> Vec<P> {
        let mut out: Vec<P> = self.suppliers.iter().map(|(p, _)| p.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    // ----- transitions -----

    fn refuse(&self, transition: &'static str) -> WrongState {
        WrongState {
            start: self.start,
            transition,
            state: self.state.name(),
        }
    }

    /// Request `id` for the missing part was sent. Only a ready batch (waiting, backoff over,
    /// not full) may start a download.
    pub(crate) fn download_started(&mut self, id: RequestId, now_ms: u64) -> Result<(), WrongState> {
        if !self.is_ready(now_ms) {
            return Err(self.refuse("download_started"));
        }
        self.state = State::Downloading { id };
        Ok(())
    }

    /// Request `id` for the missing part went, before the batch's backoff ended, to a peer that
    /// has not failed it: the backoff keeps a batch from the peers that failed it, not from a
    /// fresh one. Only a waiting batch that is not full may start a download.
    pub(crate) fn download_started_elsewhere(&mut self, id: RequestId) -> Result<(), WrongState> {
        if !self.is_waiting() {
            return Err(self.refuse("download_started_elsewhere"));
        }
        self.state = State::Downloading { id };
        Ok(())
    }

    /// Whether it waits for a request, its backoff over or not.
    pub(crate) fn is_waiting(&self) -> bool {
        matches!(self.state, State::Waiting { .. }) && !self.is_full()
    }

    /// Blocks answering request `id` (already shape-checked and linked to what it holds) are
    /// kept; it completes when full, else waits `delay_ms` for a request for the rest.
    pub(crate) fn answered(
        &mut self,
        id: RequestId,
        peer: &P,
        blocks: Vec<Block>,
        now_ms: u64,
        delay_ms: u64,
    ) -> Result<(), WrongState> {
        if self.state != (State::Downloading { id }) {
            return Err(self.refuse("answered"));
        }
        if !blocks.is_empty() {
            self.bytes += blocks.iter().map(Block::size_bytes).sum::<usize>();
            match self.suppliers.last_mut() {
                Some((last, n)) if last == peer => *n += blocks.len(),
                _ => self.suppliers.push((peer.clone(), blocks.len())),
            }
            self.blocks.extend(blocks);
        }
        self.state = if self.is_full() {
            State::Complete
        } else {
            State::Waiting {
                not_before_ms: now_ms.saturating_add(delay_ms),
            }
        };
        Ok(())
    }

    /// Request `id` brought nothing usable: the failure is counted (against `peer` if given) and
    /// the batch waits a jittered backoff.
    pub(crate) fn download_failed(
        &mut self,
        id: RequestId,
        peer: Option<&P>,
        now_ms: u64,
        config: &SyncConfig,
        jitter: &mut Jitter,
    ) -> Result<(), WrongState> {
        if self.state != (State::Downloading { id }) {
            return Err(self.refuse("download_failed"));
        }
        self.fail(peer, now_ms, config, jitter);
        Ok(())
    }

    /// Request `id`'s answer does not continue the part held: both parts are dropped, the
    /// answer's sender is charged a failure, and so is the supplier of the part held (one of the
    /// two is wrong, unknown which).
    pub(crate) fn contested(
        &mut self,
        id: RequestId,
        peer: &P,
        now_ms: u64,
        config: &SyncConfig,
        jitter: &mut Jitter,
    ) -> Result<(), WrongState> {
        if self.state != (State::Downloading { id }) {
            return Err(self.refuse("contested"));
        }
        let earlier = self.top_supplier().cloned();
        self.clear();
        self.fail(Some(peer), now_ms, config, jitter);
        if let Some(earlier) = &earlier {
            self.count_failure_of(earlier);
        }
        Ok(())
    }

    /// The complete batch does not link to the boundary of its chain: it is emptied and fetched
    /// again, counted against `blamed`; with `exclude` that peer is never asked for it again.
    pub(crate) fn link_failed(
        &mut self,
        blamed: Option<&P>,
        exclude: bool,
        now_ms: u64,
        config: &SyncConfig,
        jitter: &mut Jitter,
    ) -> Result<(), WrongState> {
        if self.state != State::Complete {
            return Err(self.refuse("link_failed"));
        }
        self.clear();
        self.fail(blamed, now_ms, config, jitter);
        if let (true, Some(peer)) = (exclude, blamed) {
            self.peer_failures
                .insert(peer.clone(), config.max_attempts_per_peer);
        }
        Ok(())
    }

    /// The complete batch was offered for import `id`.
    pub(crate) fn import_started(&mut self, id: ImportId) -> Result<(), WrongState> {
        if self.state != State::Complete {
            return Err(self.refuse("import_started"));
        }
        self.state = State::Importing { id };
        Ok(())
    }

    /// Import `id` is confirmed.
    pub(crate) fn imported(&mut self, id: ImportId) -> Result<(), WrongState> {
        if self.state != (State::Importing { id }) {
            return Err(self.refuse("imported"));
        }
        self.state = State::Imported;
        Ok(())
    }

    /// The import failed (or was forgotten) for a reason not in its blocks: offered again later.
    pub(crate) fn import_failed(&mut self) -> Result<(), WrongState> {
        if !self.is_importing() {
            return Err(self.refuse("import_failed"));
        }
        self.state = State::Complete;
        Ok(())
    }

    /// The store rejected a block of it: it is emptied and fetched again, counted against `blamed`.
    pub(crate) fn import_rejected(
        &mut self,
        blamed: Option<&P>,
        now_ms: u64,
        config: &SyncConfig,
        jitter: &mut Jitter,
    ) -> Result<(), WrongState> {
        if !self.is_importing() {
            return Err(self.refuse("import_rejected"));
        }
        self.clear();
        self.fail(blamed, now_ms, config, jitter);
        Ok(())
    }

    /// Window pressure: its blocks are dropped and it waits to be asked for again at once (any
    /// request out for it is stale from now on).
    pub(crate) fn evicted(&mut self, now_ms: u64) -> Result<(), WrongState> {
        if !(self.is_open() || self.is_complete()) {
            return Err(self.refuse("evicted"));
        }
        self.clear();
        self.state = State::Waiting {
            not_before_ms: now_ms,
        };
        Ok(())
    }

    /// Its range now ends at `end` (at least what it holds). A batch that is full at once is
    /// complete; any request out for it is then stale.
    pub(crate) fn shrunk(&mut self, end: Height) -> Result<(), WrongState> {
        if !(self.is_open() || self.is_complete()) || end > self.end {
            return Err(self.refuse("shrunk"));
        }
        self.end = end.max(self.next_height().saturating_sub(1)).max(self.start);
        if self.is_full() {
            self.state = State::Complete;
        }
        Ok(())
    }

    /// Every peer that could serve it has used up its attempts: counting starts afresh.
    pub(crate) fn forgive_peers(&mut self) {
        self.peer_failures.clear();
    }

    fn count_failure_of(&mut self, peer: &P) {
        let n = self.peer_failures.entry(peer.clone()).or_insert(0);
        *n = n.saturating_add(1);
    }

    fn clear(&mut self) {
        self.blocks.clear();
        self.suppliers.clear();
        self.bytes = 0;
    }

    fn fail(&mut self, peer: Option<&P>, now_ms: u64, config: &SyncConfig, jitter: &mut Jitter) {
        self.failures = self.failures.saturating_add(1);
        if let Some(peer) = peer {
            self.count_failure_of(peer);
        }
        let delay = jitter.stretch(config.backoff_for(self.failures));
        self.state = State::Waiting {
            not_before_ms: now_ms.saturating_add(delay),
        };
    }
}

/// Checks the shape the protocol demands of a range response to `start, count`: at most `count`
/// blocks, at heights `start, start+1, ...`, each linking to the one before (rules 1–2 inside the
/// response). A response that breaks this is the responder's fault.
pub(crate) fn check_range_shape(start: Height, count: u64, blocks: &[Block]) -> Result<(), &'static str> {
    if blocks.len() as u64 > count {
        return Err("more blocks than requested");
    }
    for (i, block) in blocks.iter().enumerate() {
        if Some(block.height()) != start.checked_add(i as u64) {
            return Err("block at a height that was not requested");
        }
    }
    for pair in blocks.windows(2) {
        if check_link(&pair[1].header, &pair[0].header).is_err() {
            return Err("blocks of one response do not chain");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
