//! A hedge for the batch in-order import waits for: when its request is late beyond its peer's
//! own norm, the same blocks are asked of a second peer. Forward sync and backfill are hedged
//! alike (backfill only while forward sync is not behind, and forward sync first). At most one
//! hedge is out at a time (only that one batch is hedged), its bytes must fit the window and a
//! byte budget (one batch's share of the window to start, refilled by an eighth of the bytes
//! answers bring), and the first valid answer wins: the other request is forgotten, and neither
//! peer is charged for it.

use std::collections::BTreeMap;

use syncnode_types::Height;

use super::{InFlight, RequestPurpose, Router};
use crate::chain::{Chain, ChainDirection};
use crate::events::RequestId;
use crate::peers::{PeerKey, Want};

/// A request is late for its peer after this many times its expected answer time.
const LATE_FACTOR: f64 = 2.0;
/// A request to a peer not measured yet is late after this many times the expected answer time
/// of the best measured peer.
const UNMEASURED_LATE_FACTOR: f64 = 4.0;
/// Least wait before a hedge: a loaded machine's scheduling is no late peer.
const HEDGE_FLOOR_MS: u64 = 300;

/// The hedge out, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hedge {
    /// The request it races.
    pub primary: RequestId,
    pub id: RequestId,
}

impl<P: PeerKey> Router<P> {
    /// When the request of the batch in-order import waits for (the first open one of `chain`)
    /// is late enough to be hedged, if it is out and no hedge is.
    pub(crate) fn hedge_due_ms<D: ChainDirection<P>>(&self, chain: &Chain<P, D>) -> Option<u64> {
        if self.hedge.is_some() {
            return None;
        }
        let id = chain.first_open().and_then(|k| chain.batch(k))?.request()?;
        let primary = self.requests.get(&id).filter(|r| !r.answered())?;
        Some(primary.sent_ms.saturating_add(self.late_after_ms(primary)?))
    }

    /// How long after it was sent `primary` is late: twice what its peer's measured link
    /// expects for what it owes; for a peer not measured yet, four times what the best measured
    /// peer would take for the same bytes (`None` when no peer is measured). What a request
    /// owes is counted at today's block-size estimate: one sent before any block arrived was
    /// sized for the largest blocks possible, which would put its lateness past its deadline.
    fn late_after_ms(&self, primary: &InFlight<P>) -> Option<u64> {
        let bytes = self.owed_now(primary);
        let own = self.peers.entries.get(&primary.peer).and_then(|e| {
            let owed: u64 = e
                .in_flight
                .iter()
                .filter_map(|(id, _)| self.requests.get(id))
                .filter(|r| !r.answered())
                .map(|r| self.owed_now(r))
                .sum();
            e.pace.expected_ms(owed.max(bytes)).map(|ms| ms * LATE_FACTOR)
        });
        let late = own.or_else(|| {
            self.peers
                .entries
                .iter()
                .filter(|(p, _)| **p != primary.peer)
                .filter_map(|(_, e)| e.pace.expected_ms(bytes))
                .min_by(f64::total_cmp)
                .map(|ms| ms * UNMEASURED_LATE_FACTOR)
        })?;
        Some((late as u64).max(HEDGE_FLOOR_MS))
    }

    /// Bytes `request` is expected to bring at today's block-size estimate (never more than
    /// it was sent for).
    fn owed_now(&self, request: &InFlight<P>) -> u64 {
        self.block_size_estimate()
            .saturating_mul(request.count)
            .min(request.bytes)
    }

    /// Asks a second peer for the batch `chain`'s import waits for, if its request is late (see
    /// the module).
    pub(crate) fn hedge_first<D: ChainDirection<P>>(
        &mut self,
        chain: &Chain<P, D>,
        which: super::ChainId,
        now_ms: u64,
    ) {
        if self.hedge_due_ms(chain).is_none_or(|due| now_ms < due) {
            return;
        }
        let Some((key, batch)) = chain.first_open().and_then(|k| Some((k, chain.batch(k)?))) else {
            return;
        };
        let Some(primary_id) = batch.request() else {
            return;
        };
        let Some(primary) = self.requests.get(&primary_id) else {
            return;
        };
        let (from, to): (Height, Height) = (batch.next_height(), batch.end());
        let size = self.block_size_estimate();
        let mut failures: BTreeMap<P, u32> = batch.peer_failures().clone();
        failures.insert(primary.peer.clone(), self.config.max_attempts_per_peer);
        let want = Want {
            from,
            to,
            bytes: self.owed_now(primary),
            urgent: true,
        };
        let pinned = chain.direction().pinned().cloned();
        let pick = self.peers.pick(
            &self.config,
            &mut self.jitter,
            now_ms,
            want,
            &failures,
            pinned.as_ref(),
        );
        let Some(peer) = pick.peer else {
            return;
        };
        let count = self
            .peers
            .entries
            .get(&peer)
            .map_or(1, |e| e.pace.request_blocks(size, to - from + 1));
        let bytes = size.saturating_mul(count);
        if bytes > self.hedge_budget
            || chain.buffered_bytes().saturating_add(bytes as usize) > chain.window().bytes
        {
            return;
        }
        self.hedge_budget -= bytes;
        tracing::debug!(?peer, late = ?primary.peer, from, count, "hedging the batch import waits for");
        let purpose = RequestPurpose::Hedge {
            chain: which,
            key,
            primary: primary_id,
        };
        let id = self.send_range(now_ms, peer, purpose, (from, count), batch.failures());
        self.hedge = Some(Hedge {
            primary: primary_id,
            id,
        });
    }

    /// Request `settled` left the requests: if it was raced by a hedge, or was the hedge, the
    /// race is over. A hedge whose primary settled first is forgotten (its answer, should one
    /// come, is ignored; nobody is charged).
    pub(crate) fn hedge_settled(&mut self, settled: RequestId) {
        let Some(hedge) = self.hedge else {
            return;
        };
        if hedge.id == settled {
            self.hedge = None;
        } else if hedge.primary == settled {
            self.hedge = None;
            if let Some(request) = self.requests.remove(&hedge.id)
                && let Some(entry) = self.peers.entries.get_mut(&request.peer)
            {
                entry.settle(hedge.id);
            }
        }
    }

    /// An answer brought `bytes`: an eighth of them refills the hedge budget, up to a quarter of
    /// the window.
    pub(crate) fn hedge_credit(&mut self, bytes: u64) {
        let most = (self.config.window_bytes / 4) as u64;
        self.hedge_budget = self.hedge_budget.saturating_add(bytes / 8).min(most);
    }
}
