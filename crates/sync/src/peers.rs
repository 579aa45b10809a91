//! What the engine knows of each peer: its last Status, what it credibly claims, whether it is busy.
//!
//! # Whose claim sets the target
//! A peer counts toward the sync target for the larger of two heights:
//! - what it *served*: the highest block it delivered to us on this connection (proven to exist,
//!   so no later word of its own drags the target below it); and
//! - what it *claims*: its latest Status's head, but only while that Status is fresh (younger than
//!   `status_stale_ms`) and only up to its cap.
//!
//! The claim is its latest word, not the highest it ever made: a peer that refreshes its Status
//! lower, or stops refreshing it, no longer holds the target up with its old claim. A lower claim
//! of one peer never lowers what another peer counts for (the target is the highest of all), nor
//! below what that peer itself served.
//!
//! A peer is capped (believed no higher than just below a height) when it shows it lacks a block
//! its claim covers: it answered empty at that height, or it refused, erred or reset the stream on
//! [`CLAIM_REFUSALS`] range requests in a row that started inside its claim (it is then capped
//! below the lowest of them, and once capped, one more refusal below the cap lowers it again;
//! meanwhile it rests: it gets work only when no peer free of refusals and timeouts serves the
//! range). Neither refusing nor erring is charged (the protocol allows both); it is the claim
//! that gets capped. A cap is lifted by evidence: a block the peer delivers above it (a batch
//! starting at or below the cap may reach past it). Its word lifts a cap only rarely: a Status
//! naming the head the cap was made under never does, and one naming another head only once the
//! cap is [`CAP_HOLD_MS`] old (counted from the Status it was made under); a peer so lifted that
//! refuses again inside its claim is capped at the first refusal. So a peer claiming a head it
//! never serves, fixed or a new one in every Status, sets the target for at most one refused
//! request per such interval, while an honest peer that lacked a block a moment (a restart, a busy
//! spell) is believed again once it delivers above the cap, or after the interval. The engine keeps
//! a peer's cap across a reconnect ([`ClaimRecord`], in a bounded LRU by peer).
//!
//! A short but non-empty answer proves nothing missing (a server may pace its output) and caps
//! nothing; an empty answer to a backfill request shows only that the peer's history no longer
//! reaches that low (its earliest height rose): it raises the floor the engine asks it from until
//! its next Status, and leaves its head alone.

use std::collections::BTreeMap;

use syncnode_types::{Hash, Height};

use crate::config::SyncConfig;
use crate::events::{PeerStatus, RequestId};
use crate::jitter::Jitter;
use crate::pace::Pace;

/// Range requests inside its claim a peer may refuse, err on or reset in a row before its claim
/// is capped below the height it would not serve.
pub(crate) const CLAIM_REFUSALS: u32 = 3;

/// How long a cap holds against a Status naming another head (see the module).
pub(crate) const CAP_HOLD_MS: u64 = 10 * 60 * 1_000;

/// How many departed peers' claim records the engine keeps for their reconnect.
pub(crate) const REMEMBERED_PEERS: usize = 1_024;

/// A batch waits for a busy peer rather than go to a free one expected to take more than this
/// many times as long.
const BUSY_WAIT_FACTOR: u64 = 2;

/// A free peer not asked for this long is asked again, for a batch import does not wait for,
/// as if it were not measured: a peer measured slow once (a round trip taken while sixteen peers
/// connected at once) would otherwise never be measured again while faster peers have room.
pub(crate) const REPROBE_AFTER_MS: u64 = 500;

/// What the engine needs of a peer identifier (libp2p's `PeerId` has all of it).
pub trait PeerKey: Clone + Eq + Ord + std::hash::Hash + std::fmt::Debug {}
impl<T: Clone + Eq + Ord + std::hash::Hash + std::fmt::Debug> PeerKey for T {}

/// A peer is not believed above `height` (see the module for what lifts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cap {
    pub height: Height,
    /// The head its Status named when the cap was made.
    pub under: Hash,
    /// When that Status arrived.
    pub since_ms: u64,
}

/// What a peer's claims earned it, kept by the engine while the peer is away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClaimRecord {
    cap: Option<Cap>,
    caught: bool,
}

/// One connected peer that sent a Status.
#[derive(Debug, Clone)]
pub(crate) struct PeerEntry {
    /// Its latest Status: what it says it serves now.
    pub status: PeerStatus,
    pub status_at_ms: u64,
    /// Highest height of a block it delivered on this connection (0: none yet).
    pub served: Height,
    /// It showed it lacks a block its claim covers: not believed above the cap (see the module).
    pub cap: Option<Cap>,
    /// It was capped before (and has not delivered above the cap since): capped again at once.
    pub caught: bool,
    /// It answered empty to a backfill request at this height: not asked at or below it until its
    /// next Status.
    pub floor: Option<Height>,
    /// Range requests inside its claim refused, erred on or reset in a row, and the lowest
    /// height one of them started at.
    pub refusals: u32,
    pub refused_from: Height,
    /// Data it sent was contradicted by data we imported: no more work, no say in the target.
    pub proven_wrong: bool,
    /// The requests of ours it is serving, each with the bytes it is expected to bring.
    pub in_flight: Vec<(RequestId, u64)>,
    /// What we measured of its link.
    pub pace: Pace,
    /// A request to it ran out a deadline shorter than the configured one (its link seemed slower
    /// than measured): its next request gets the configured deadline. Cleared by its next answer.
    pub late: bool,
    /// When we last asked it for a fresh Status.
    pub status_requested_ms: Option<u64>,
    /// A request to it timed out: until this time it gets work only when no other peer serving
    /// the range is free of such a mark (see [`PeerEntry::resting`]). Cleared by its next answer.
    pub slow_until_ms: u64,
    /// When we last sent it a range request.
    pub asked_ms: u64,
}

impl PeerEntry {
    pub(crate) fn new(status: PeerStatus, now_ms: u64) -> Self {
        PeerEntry {
            status,
            status_at_ms: now_ms,
            served: 0,
            cap: None,
            caught: false,
            floor: None,
            refusals: 0,
            refused_from: Height::MAX,
            proven_wrong: false,
            in_flight: Vec::new(),
            pace: Pace::default(),
            late: false,
            status_requested_ms: None,
            slow_until_ms: 0,
            asked_ms: now_ms,
        }
    }

    /// A fresh Status: it replaces the last and lifts the floor, and a cap only if it names another
    /// head [`CAP_HOLD_MS`] after the cap was made.
    pub(crate) fn refresh(&mut self, status: PeerStatus, now_ms: u64) {
        self.lift_cap_if_due(&status, now_ms);
        self.floor = None;
        self.status = status;
        self.status_at_ms = now_ms;
        self.status_requested_ms = None;
    }

    fn lift_cap_if_due(&mut self, status: &PeerStatus, now_ms: u64) {
        if self
            .cap
            .is_some_and(|c| c.under != status.head_hash && now_ms >= c.since_ms.saturating_add(CAP_HOLD_MS))
        {
            self.cap = None;
            self.refusals = 0;
            self.refused_from = Height::MAX;
        }
    }

    /// What it earned by its claims, if anything, to keep while it is away.
    pub(crate) fn claim_record(&self) -> Option<ClaimRecord> {
        (self.cap.is_some() || self.caught).then_some(ClaimRecord {
            cap: self.cap,
            caught: self.caught,
        })
    }

    /// A peer back with a Status: what it earned before, as its Status would leave it.
    pub(crate) fn returned(status: PeerStatus, now_ms: u64, record: ClaimRecord) -> Self {
        let mut entry = PeerEntry::new(status, now_ms);
        entry.cap = record.cap;
        entry.caught = record.caught;
        entry.lift_cap_if_due(&status, now_ms);
        entry
    }

    /// The highest height it is believed to serve: its Status's head, less its cap.
    pub(crate) fn believed_head(&self) -> Height {
        self.cap
            .map_or(self.status.head_height, |c| c.height.min(self.status.head_height))
    }

    /// The lowest height it is believed to serve: its Status's earliest, above its floor.
    fn believed_earliest(&self) -> Height {
        self.floor.map_or(self.status.earliest_height, |f| {
            f.saturating_add(1).max(self.status.earliest_height)
        })
    }

    /// Whether its Status is too old to set the target or get work.
    pub(crate) fn is_stale(&self, config: &SyncConfig, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.status_at_ms) > config.status_stale_ms
    }

    /// The head this peer counts for in the sync target, if it counts at all (see the module).
    pub(crate) fn target_head(&self, config: &SyncConfig, now_ms: u64) -> Option<Height> {
        if self.proven_wrong {
            return None;
        }
        let claim = if self.is_stale(config, now_ms) {
            0
        } else {
            self.believed_head()
        };
        Some(claim.max(self.served))
    }

    /// The head it is believed to serve, if its data was not proven wrong (for parent lookups).
    pub(crate) fn credible_head(&self) -> Option<Height> {
        (!self.proven_wrong).then(|| self.believed_head())
    }

    /// Whether it is believed to serve `from` (it answers the part of `from..=to` it has).
    pub(crate) fn serves(&self, from: Height) -> bool {
        !self.proven_wrong && self.believed_earliest() <= from && self.believed_head() >= from
    }

    /// Whether it is believed to serve all of `from..=to`.
    fn serves_all(&self, from: Height, to: Height) -> bool {
        self.serves(from) && self.believed_head() >= to
    }

    /// Whether it timed out recently, or refused, erred or reset its last request, and has not
    /// answered since: it gets work only when no other peer serving the range is free of both.
    pub(crate) fn resting(&self, now_ms: u64) -> bool {
        now_ms < self.slow_until_ms || self.refusals > 0
    }

    /// Bytes its requests in flight are expected to bring.
    pub(crate) fn flight_bytes(&self) -> u64 {
        self.in_flight.iter().map(|(_, b)| *b).sum()
    }

    /// Whether it may take one more request: it holds none; or it is measured and holds fewer
    /// than `most`, and either just one (the next travels while that one's answer streams in) or
    /// fewer bytes than its bandwidth-delay product. A peer not measured yet holds one.
    pub(crate) fn has_room(&self, most: usize) -> bool {
        let Some(room) = self.pace.flight_bytes() else {
            return self.in_flight.is_empty();
        };
        let held = self.in_flight.len();
        held == 0 || (held < most && (held < 2 || self.flight_bytes() < room))
    }

    /// About when a request for `bytes` sent to it now would be answered, in milliseconds from
    /// now, from its measured link and what it already holds: lower is more free capacity. A
    /// peer not measured yet counts as free, except for the batch in-order import waits for
    /// (`urgent`), which goes to a peer whose link we know when there is one.
    /// A free peer not asked for [`REPROBE_AFTER_MS`] counts as not measured for a batch that is
    /// not urgent, so that its measure is renewed.
    pub(crate) fn expected_answer_ms(&self, bytes: u64, urgent: bool, now_ms: u64) -> u64 {
        let idle = self.in_flight.is_empty() && now_ms.saturating_sub(self.asked_ms) >= REPROBE_AFTER_MS;
        if idle && !urgent {
            return 0;
        }
        match (self.pace.rtt_ms(), self.pace.bytes_per_ms()) {
            (Some(rtt), Some(bw)) => {
                let queued = self.flight_bytes().saturating_add(bytes) as f64;
                (rtt + queued / bw.max(f64::MIN_POSITIVE)) as u64
            }
            _ if urgent => u64::MAX,
            _ => 0,
        }
    }

    /// Forgets request `id`; whether it held it.
    pub(crate) fn settle(&mut self, id: RequestId) -> bool {
        let before = self.in_flight.len();
        self.in_flight.retain(|(held, _)| *held != id);
        self.in_flight.len() != before
    }

    /// Whether its latest Status promises the block at `height`.
    pub(crate) fn promises(&self, height: Height) -> bool {
        self.status.earliest_height <= height && height <= self.status.head_height
    }

    /// Marks that it lacks `height`: it is not believed above `height - 1` while its head stays.
    pub(crate) fn lacks(&mut self, height: Height) {
        let below = height.saturating_sub(1);
        let height = self.cap.map_or(below, |c| c.height.min(below));
        let since_ms = self.cap.map_or(self.status_at_ms, |c| c.since_ms);
        self.cap = Some(Cap {
            height,
            under: self.status.head_hash,
            since_ms,
        });
        self.caught = true;
        self.refusals = 0;
        self.refused_from = Height::MAX;
    }

    /// It delivered blocks up to `height`: it serves, so its run of refusals ends, and a cap below
    /// `height` is proven wrong.
    pub(crate) fn delivered(&mut self, height: Height) {
        self.served = self.served.max(height);
        if self.cap.is_some_and(|c| c.height < height) {
            self.cap = None;
            self.caught = false;
        }
        self.refusals = 0;
        self.refused_from = Height::MAX;
    }

    /// It refused, erred on or reset a forward request from `start`. Inside its claim, the
    /// [`CLAIM_REFUSALS`]th in a row (the first, once it is capped) caps it below the lowest
    /// start of the run; returns the cap if it made one.
    pub(crate) fn refused(&mut self, start: Height) -> Option<Height> {
        if !self.promises(start) || self.believed_head() < start {
            return None;
        }
        self.refusals += 1;
        self.refused_from = self.refused_from.min(start);
        // Once caught, it gets no second run of tries.
        let tries = if self.cap.is_some() || self.caught {
            1
        } else {
            CLAIM_REFUSALS
        };
        if self.refusals < tries {
            return None;
        }
        let from = self.refused_from;
        self.lacks(from);
        Some(from.saturating_sub(1))
    }
}

/// All peers with a Status.
#[derive(Debug, Clone)]
pub(crate) struct Peers<P> {
    pub entries: BTreeMap<P, PeerEntry>,
}

impl<P: Clone + Ord + std::hash::Hash> Peers<P> {
    pub(crate) fn new() -> Self {
        Peers {
            entries: BTreeMap::new(),
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

    /// The highest head any peer counts for in the target (see the module).
    pub(crate) fn best_head(&self, config: &SyncConfig, now_ms: u64) -> Option<Height> {
        self.entries
            .values()
            .filter_map(|e| e.target_head(config, now_ms))
            .max()
    }

    /// The best peer with room for one more request (`only` that one, when given) believed to
    /// serve `want.from` (the first height of `from..=to` still missing), preferring peers that
    /// failed this range least (`failures`), then peers believed to serve all of it (a peer that
    /// has only the bottom part answers that part, and the batch keeps it), then the one that
    /// would answer soonest by its measured link and what it holds (see
    /// [`PeerEntry::expected_answer_ms`]), ties broken at random. None is picked when a measured
    /// peer without room would answer more than [`BUSY_WAIT_FACTOR`] times sooner than the best
    /// free one, even after what it owes: a slow link does not get a batch a brisk one would
    /// bring first. Scores play no part: they are the network's book, which
    /// disconnects and bans; the engine ranks by what it saw of this range. A peer resting after
    /// a timeout is passed over while some other peer serving the range is not resting, even a
    /// busy one: waiting for a brisk peer costs less than a batch stuck for a whole timeout in
    /// front of in-order import. Peers with a stale Status are listed to be asked for a fresh one
    /// instead.
    pub(crate) fn pick(
        &self,
        config: &SyncConfig,
        jitter: &mut Jitter,
        now_ms: u64,
        want: Want,
        failures: &BTreeMap<P, u32>,
        only: Option<&P>,
    ) -> Pick<P> {
        let Want { from, to, .. } = want;
        let mut best: Option<((u32, bool, u64, u64), P)> = None;
        let mut pick = Pick {
            peer: None,
            exhausted: false,
            stale: Vec::new(),
        };
        let allowed = |peer: &P| only.is_none_or(|o| o == peer);
        let some_brisk = self
            .entries
            .iter()
            .any(|(p, e)| allowed(p) && e.serves(from) && !e.resting(now_ms));
        // How soon a measured peer without room could answer it, after what it owes.
        let mut soonest_busy = u64::MAX;
        for (peer, entry) in &self.entries {
            if !allowed(peer) || !entry.serves(from) || (some_brisk && entry.resting(now_ms)) {
                continue;
            }
            let failed = failures.get(peer).copied().unwrap_or(0);
            if !entry.has_room(config.max_requests_per_peer) {
                if !entry.is_stale(config, now_ms) && failed < config.max_attempts_per_peer {
                    let owed = entry.flight_bytes().saturating_add(want.bytes);
                    let soon = entry.pace.expected_ms(owed).map_or(u64::MAX, |ms| ms as u64);
                    soonest_busy = soonest_busy.min(soon);
                }
                continue;
            }
            if entry.is_stale(config, now_ms) {
                pick.stale.push(peer.clone());
                continue;
            }
            if failed >= config.max_attempts_per_peer {
                pick.exhausted = true;
                continue;
            }
            // Lower is better: fewer failures, the whole range, sooner answered, random tie-break.
            let soon = entry.expected_answer_ms(want.bytes, want.urgent, now_ms);
            let key = (failed, !entry.serves_all(from, to), soon, jitter.next_u64());
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, peer.clone()));
            }
        }
        // A busy peer that would still answer well before the best free one: the batch waits
        // for it (it is asked again as soon as that peer has room).
        if best
            .as_ref()
            .is_some_and(|((_, _, soon, _), _)| *soon / BUSY_WAIT_FACTOR > soonest_busy)
        {
            best = None;
        }
        pick.peer = best.map(|(_, p)| p);
        pick.exhausted &= pick.peer.is_none();
        pick
    }
}

/// What [`Peers::pick`] looks for a peer for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Want {
    /// The first missing height and the last height of the batch.
    pub from: Height,
    pub to: Height,
    /// Bytes the request is expected to bring.
    pub bytes: u64,
    /// It is the batch in-order import waits for.
    pub urgent: bool,
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
