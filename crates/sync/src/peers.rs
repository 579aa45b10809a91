//! What the engine knows of each peer: its last Status, what it credibly claims, whether it is busy.

use std::collections::BTreeMap;

use syncnode_types::Height;

use crate::config::SyncConfig;
use crate::events::{PeerStatus, RequestId};
use crate::jitter::Jitter;
use syncnode_proto::peer_score::{PeerScores, ScoreConfig};

/// What the engine needs of a peer identifier (libp2p's `PeerId` has all of it).
pub trait PeerKey: Clone + Eq + Ord + std::hash::Hash + std::fmt::Debug {}
impl<T: Clone + Eq + Ord + std::hash::Hash + std::fmt::Debug> PeerKey for T {}

/// One connected peer that sent a Status.
#[derive(Debug, Clone)]
pub(crate) struct PeerEntry {
    /// Its latest Status: what it says it serves now.
    pub status: PeerStatus,
    pub status_at_ms: u64,
    /// Highest head it ever claimed on this connection. A later, lower Status does not lower it:
    /// one peer lying low cannot drag the sync target back.
    pub claimed_head: Height,
    /// Its own empty answer showed it lacks blocks above this height: it is not believed beyond it.
    pub cap: Option<Height>,
    /// Data it sent was contradicted by data we imported: no more work, no say in the target.
    pub proven_wrong: bool,
    /// The one request of ours it is serving (the busy set).
    pub in_flight: Option<RequestId>,
    /// When we last asked it for a fresh Status.
    pub status_requested_ms: Option<u64>,
    /// A request to it timed out: until this time it gets work only when no other peer serving
    /// the range is free of such a mark (see [`PeerEntry::resting`]). Cleared by its next answer.
    pub slow_until_ms: u64,
}

impl PeerEntry {
    pub(crate) fn new(status: PeerStatus, now_ms: u64) -> Self {
        PeerEntry {
            status,
            status_at_ms: now_ms,
            claimed_head: status.head_height,
            cap: None,
            proven_wrong: false,
            in_flight: None,
            status_requested_ms: None,
            slow_until_ms: 0,
        }
    }

    /// The head this peer counts for in the sync target, if it counts at all.
    pub(crate) fn credible_head(&self) -> Option<Height> {
        if self.proven_wrong {
            return None;
        }
        Some(self.cap.map_or(self.claimed_head, |c| c.min(self.claimed_head)))
    }

    /// The head its latest Status names, less what it proved it lacks.
    pub(crate) fn served_head(&self) -> Height {
        self.cap
            .map_or(self.status.head_height, |c| c.min(self.status.head_height))
    }

    /// Whether its latest Status (less what it proved it lacks) covers `from..=to`.
    pub(crate) fn serves(&self, from: Height, to: Height) -> bool {
        !self.proven_wrong && self.status.earliest_height <= from && self.served_head() >= to
    }

    /// Whether it timed out recently and has not answered since.
    pub(crate) fn resting(&self, now_ms: u64) -> bool {
        now_ms < self.slow_until_ms
    }

    /// Whether its latest Status promises the block at `height`.
    pub(crate) fn promises(&self, height: Height) -> bool {
        self.status.earliest_height <= height && height <= self.status.head_height
    }

    /// Marks that it lacks `height`: it is not believed above `height - 1` any more.
    pub(crate) fn lacks(&mut self, height: Height) {
        let below = height.saturating_sub(1);
        self.cap = Some(self.cap.map_or(below, |c| c.min(below)));
    }
}

/// All peers with a Status, plus the engine's own ranking of them.
#[derive(Debug, Clone)]
pub(crate) struct Peers<P> {
    pub entries: BTreeMap<P, PeerEntry>,
    /// The engine's private copy of the score policy, used only to prefer good peers. The
    /// authoritative book lives in the network layer, moved by [`crate::Action::Penalise`].
    pub ranking: PeerScores<P>,
}

impl<P: Clone + Ord + std::hash::Hash> Peers<P> {
    pub(crate) fn new() -> Self {
        Peers {
            entries: BTreeMap::new(),
            ranking: PeerScores::new(ScoreConfig::default()),
        }
    }

    /// When a peer stops resting, its Status turns stale, or a fresh one may be asked for again.
    pub(crate) fn wakeups(&self, config: &SyncConfig, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
        let refresh_interval = (config.status_stale_ms / 3).max(1);
        let stale_after = config.status_stale_ms;
        self.entries.values().flat_map(move |e| {
            let stale_at = e.status_at_ms.saturating_add(stale_after).saturating_add(1);
            let ask_again = e
                .status_requested_ms
                .filter(|_| stale_at <= now_ms)
                .map(|t| t.saturating_add(refresh_interval));
            [Some(e.slow_until_ms), Some(stale_at), ask_again]
                .into_iter()
                .flatten()
        })
    }

    /// Highest credible head among peers.
    pub(crate) fn best_head(&self) -> Option<Height> {
        self.entries.values().filter_map(PeerEntry::credible_head).max()
    }

    /// The best idle peer whose Status covers `from..=to` (`only` that one, when given), preferring peers that failed this range
    /// least (`failures`), then higher scores, ties broken at random. A peer resting after a
    /// timeout is passed over while some other peer serving the range is not resting, even a busy
    /// one: waiting for a brisk peer costs less than a batch stuck for a whole timeout in front of
    /// in-order import. Peers with a stale Status are listed to be asked for a fresh one instead.
    pub(crate) fn pick(
        &self,
        config: &SyncConfig,
        jitter: &mut Jitter,
        now_ms: u64,
        (from, to): (Height, Height),
        failures: &BTreeMap<P, u32>,
        only: Option<&P>,
    ) -> Pick<P> {
        let mut best: Option<((u32, i64, u64), P)> = None;
        let mut pick = Pick {
            peer: None,
            exhausted: false,
            stale: Vec::new(),
        };
        let allowed = |peer: &P| only.is_none_or(|o| o == peer);
        let some_brisk = self
            .entries
            .iter()
            .any(|(p, e)| allowed(p) && e.serves(from, to) && !e.resting(now_ms));
        for (peer, entry) in &self.entries {
            if !allowed(peer) {
                continue;
            }
            if entry.in_flight.is_some() || !entry.serves(from, to) || (some_brisk && entry.resting(now_ms)) {
                continue;
            }
            if now_ms.saturating_sub(entry.status_at_ms) > config.status_stale_ms {
                pick.stale.push(peer.clone());
                continue;
            }
            let failed = failures.get(peer).copied().unwrap_or(0);
            if failed >= config.max_attempts_per_peer {
                pick.exhausted = true;
                continue;
            }
            // Lower is better: fewer failures, higher score (rounded to a tenth), random tie-break.
            let score = -(self.ranking.score(peer, now_ms) * 10.0).round() as i64;
            let key = (failed, score, jitter.next_u64());
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, peer.clone()));
            }
        }
        pick.peer = best.map(|(_, p)| p);
        pick.exhausted &= pick.peer.is_none();
        pick
    }
}

/// The outcome of [`Peers::pick`].
#[derive(Debug)]
pub(crate) struct Pick<P> {
    /// The chosen peer, if any fits.
    pub peer: Option<P>,
    /// No peer fits, but some would have if it had not used up its attempts.
    pub exhausted: bool,
    /// Peers that would serve but whose Status is too old to trust: ask them for a fresh one.
    pub stale: Vec<P>,
}
