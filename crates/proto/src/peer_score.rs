//! Peer scores: typed actions move a score that decays toward zero; thresholds disconnect, then ban.
//!
//! Pure bookkeeping with an explicit clock (`now_ms`), so the sync simulator and the network's peer
//! manager apply exactly the same policy. It lives here, beside the protocol it polices, so that
//! every crate that charges or ranks peers reaches it without depending on another. A score starts at 0 and is clamped to
//! `[-100, max_score]`. Between two updates it decays toward 0 with the configured half-life. At or
//! below `disconnect_threshold` the verdict is [`Verdict::Disconnect`]; at or below `ban_threshold`
//! the peer is banned until `now + ban_duration_ms`, after which its entry restarts at half the
//! disconnect threshold: on probation, not forgiven.
//!
//! What each action costs is [`PeerAction::weight`]. A single [`PeerAction::BrokenPromise`] (a peer
//! answered empty inside the range its Status claims) or a timeout never bans on its own; invalid
//! data does. Never charge a peer for lacking what it never claimed to have, nor for our own faults:
//! that judgement is the caller's, this book only counts.

use std::collections::HashMap;
use std::hash::Hash;

/// What a peer did, as far as its score is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAction {
    /// Sent a block breaking a validity rule, or a block it was not asked for. Bans at once.
    InvalidData,
    /// Sent history that does not link to what it must link to (a batch proven wrong by another).
    ProvenWrong,
    /// Broke the wire protocol: oversize or undecodable frame, stalled stream. Disconnects at
    /// once; a second within about six minutes (the first decayed to no less than -20) bans.
    ProtocolViolation,
    /// Sent a well-formed request outside the protocol's limits (a count of 0 or above 1,024,
    /// no hashes or more than 128): an honest mistake once, answered `INVALID_REQUEST` and
    /// kept; the second within a half-life disconnects, the fifth bans.
    InvalidRequest,
    /// Did not answer within the deadline.
    Timeout,
    /// Answered empty or short inside the range its own Status claims to serve.
    BrokenPromise,
    /// Answered `RATE_LIMITED`.
    RateLimited,
    /// Delivered blocks that were verified and imported.
    UsefulResponse,
}

impl PeerAction {
    /// Score change of one occurrence.
    pub fn weight(self) -> f64 {
        match self {
            PeerAction::InvalidData => -100.0,
            PeerAction::ProvenWrong => -60.0,
            PeerAction::ProtocolViolation => -30.0,
            PeerAction::InvalidRequest => -12.0,
            PeerAction::Timeout => -8.0,
            PeerAction::BrokenPromise => -5.0,
            PeerAction::RateLimited => -1.0,
            PeerAction::UsefulResponse => 1.0,
        }
    }
}

/// The policy's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreConfig {
    /// Time for a score to decay halfway to 0.
    pub half_life_ms: u64,
    /// At or below this score the peer is disconnected.
    pub disconnect_threshold: f64,
    /// At or below this score the peer is banned.
    pub ban_threshold: f64,
    /// How long a ban lasts.
    pub ban_duration_ms: u64,
    /// Highest score good behaviour can earn.
    pub max_score: f64,
    /// Most peers remembered; the entries closest to neutral are forgotten first.
    pub max_entries: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        ScoreConfig {
            half_life_ms: 10 * 60 * 1000,
            disconnect_threshold: -20.0,
            ban_threshold: -50.0,
            ban_duration_ms: 30 * 60 * 1000,
            max_score: 20.0,
            max_entries: 10_000,
        }
    }
}

/// The outcome of applying an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stays connected.
    Keep,
    /// Disconnect, may reconnect.
    Disconnect,
    /// Disconnect and refuse until `until_ms`.
    Ban { until_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f64,
    updated_ms: u64,
    banned_until_ms: Option<u64>,
}

/// Scores of all peers seen, bounded by `max_entries`.
#[derive(Debug, Clone)]
pub struct PeerScores<P> {
    config: ScoreConfig,
    entries: HashMap<P, Entry>,
}

impl<P: Clone + Eq + Hash> PeerScores<P> {
    /// An empty book.
    pub fn new(config: ScoreConfig) -> Self {
        PeerScores {
            config,
            entries: HashMap::new(),
        }
    }

    /// The policy in force.
    pub fn config(&self) -> &ScoreConfig {
        &self.config
    }

    fn decayed(&self, entry: &Entry, now_ms: u64) -> f64 {
        let elapsed = now_ms.saturating_sub(entry.updated_ms) as f64;
        let half_life = self.config.half_life_ms.max(1) as f64;
        entry.score * 0.5f64.powf(elapsed / half_life)
    }

    /// The peer's current score (0 for an unknown peer).
    pub fn score(&self, peer: &P, now_ms: u64) -> f64 {
        self.entries.get(peer).map_or(0.0, |e| self.decayed(e, now_ms))
    }

    /// Whether the peer is banned at `now_ms`.
    pub fn is_banned(&self, peer: &P, now_ms: u64) -> bool {
        self.banned_until(peer, now_ms).is_some()
    }

    /// End of the peer's ban, if banned at `now_ms`.
    pub fn banned_until(&self, peer: &P, now_ms: u64) -> Option<u64> {
        self.entries
            .get(peer)
            .and_then(|e| e.banned_until_ms)
            .filter(|&until| until > now_ms)
    }

    /// Applies `action` to `peer` and says what to do with it.
    pub fn apply(&mut self, peer: &P, action: PeerAction, now_ms: u64) -> Verdict {
        let config = self.config;
        let current = self.entries.get(peer).copied();
        let mut entry = current.unwrap_or(Entry {
            score: 0.0,
            updated_ms: now_ms,
            banned_until_ms: None,
        });
        if let Some(until) = entry.banned_until_ms {
            if until <= now_ms {
                // The ban served its time: restart halfway to the disconnect line.
                entry = Entry {
                    score: config.disconnect_threshold / 2.0,
                    updated_ms: now_ms,
                    banned_until_ms: None,
                };
            } else {
                return Verdict::Ban { until_ms: until };
            }
        }
        let score = (self.decayed(&entry, now_ms) + action.weight()).clamp(-100.0, config.max_score);
        entry.score = score;
        entry.updated_ms = now_ms;
        let verdict = if score <= config.ban_threshold {
            let until_ms = now_ms.saturating_add(config.ban_duration_ms);
            entry.banned_until_ms = Some(until_ms);
            Verdict::Ban { until_ms }
        } else if score <= config.disconnect_threshold {
            Verdict::Disconnect
        } else {
            Verdict::Keep
        };
        if current.is_none() && self.entries.len() >= config.max_entries {
            self.evict_one(now_ms);
        }
        self.entries.insert(peer.clone(), entry);
        verdict
    }

    /// Bans `peer` outright until `now + ban_duration` (e.g. another genesis).
    pub fn ban(&mut self, peer: &P, now_ms: u64) -> u64 {
        let until_ms = now_ms.saturating_add(self.config.ban_duration_ms);
        self.entries.insert(
            peer.clone(),
            Entry {
                score: self.config.ban_threshold,
                updated_ms: now_ms,
                banned_until_ms: Some(until_ms),
            },
        );
        until_ms
    }

    fn evict_one(&mut self, now_ms: u64) {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.banned_until_ms.is_none_or(|u| u <= now_ms))
            .min_by(|a, b| {
                let (sa, sb) = (self.decayed(a.1, now_ms).abs(), self.decayed(b.1, now_ms).abs());
                sa.total_cmp(&sb)
            })
            .map(|(p, _)| p.clone());
        if let Some(p) = victim {
            self.entries.remove(&p);
        }
    }

    /// Forgets entries that have decayed to neutral and are not banned.
    pub fn prune(&mut self, now_ms: u64) {
        let config = self.config;
        self.entries.retain(|_, e| {
            let elapsed = now_ms.saturating_sub(e.updated_ms) as f64;
            let score = e.score * 0.5f64.powf(elapsed / config.half_life_ms.max(1) as f64);
            e.banned_until_ms.is_some_and(|u| u > now_ms) || score.abs() >= 0.5
        });
    }

    /// Number of remembered peers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every remembered peer with its score now, for `/peers` and metrics.
    pub fn snapshot(&self, now_ms: u64) -> Vec<(P, f64, bool)> {
        self.entries
            .iter()
            .map(|(p, e)| {
                (
                    p.clone(),
                    self.decayed(e, now_ms),
                    e.banned_until_ms.is_some_and(|u| u > now_ms),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_data_bans_and_the_ban_expires() {
        let mut book = PeerScores::new(ScoreConfig::default());
        let Verdict::Ban { until_ms } = book.apply(&1u32, PeerAction::InvalidData, 1_000) else {
            panic!("invalid data must ban");
        };
        assert!(book.is_banned(&1, until_ms - 1));
        assert!(!book.is_banned(&1, until_ms));
        // After the ban, one more small offence keeps it; the peer is not re-banned at once.
        assert_eq!(book.apply(&1, PeerAction::RateLimited, until_ms), Verdict::Keep);
    }

    #[test]
    fn small_offences_never_ban_alone_and_decay() {
        let config = ScoreConfig::default();
        let mut book = PeerScores::new(config);
        assert_eq!(book.apply(&7u32, PeerAction::BrokenPromise, 0), Verdict::Keep);
        assert_eq!(book.apply(&7u32, PeerAction::Timeout, 0), Verdict::Keep);
        assert!((book.score(&7, 0) + 13.0).abs() < 1e-9);
        assert!((book.score(&7, config.half_life_ms) + 6.5).abs() < 1e-9);
        // Repeated timeouts disconnect before they ban.
        assert_eq!(book.apply(&8u32, PeerAction::Timeout, 0), Verdict::Keep);
        assert_eq!(book.apply(&8u32, PeerAction::Timeout, 0), Verdict::Keep);
        assert_eq!(book.apply(&8u32, PeerAction::Timeout, 0), Verdict::Disconnect);
    }

    /// At -25 two violations banned only when they came at the same instant: any decay between
    /// them (one second is enough) left the peer at -49.9, above the ban threshold.
    #[test]
    fn a_protocol_violation_disconnects_and_a_second_minutes_later_bans() {
        let mut book = PeerScores::new(ScoreConfig::default());
        assert_eq!(
            book.apply(&1u32, PeerAction::ProtocolViolation, 0),
            Verdict::Disconnect
        );
        assert!(matches!(
            book.apply(&1u32, PeerAction::ProtocolViolation, 5 * 60 * 1000),
            Verdict::Ban { .. }
        ));
        assert_eq!(
            book.apply(&2u32, PeerAction::ProtocolViolation, 0),
            Verdict::Disconnect
        );
        assert!(matches!(
            book.apply(&2u32, PeerAction::ProtocolViolation, 1_000),
            Verdict::Ban { .. }
        ));
    }

    #[test]
    fn one_invalid_request_is_tolerated_repeats_are_not() {
        let mut book = PeerScores::new(ScoreConfig::default());
        assert_eq!(book.apply(&1u32, PeerAction::InvalidRequest, 0), Verdict::Keep);
        assert_eq!(
            book.apply(&1u32, PeerAction::InvalidRequest, 0),
            Verdict::Disconnect
        );
        for _ in 0..2 {
            assert_eq!(
                book.apply(&1u32, PeerAction::InvalidRequest, 0),
                Verdict::Disconnect
            );
        }
        assert!(matches!(
            book.apply(&1u32, PeerAction::InvalidRequest, 0),
            Verdict::Ban { .. }
        ));
    }

    #[test]
    fn good_behaviour_is_capped_and_book_is_bounded() {
        let config = ScoreConfig {
            max_entries: 3,
            ..ScoreConfig::default()
        };
        let mut book = PeerScores::new(config);
        for _ in 0..100 {
            book.apply(&1u32, PeerAction::UsefulResponse, 0);
        }
        assert_eq!(book.score(&1, 0), config.max_score);
        book.apply(&2, PeerAction::InvalidData, 0);
        book.apply(&3, PeerAction::RateLimited, 0);
        book.apply(&4, PeerAction::Timeout, 0);
        assert_eq!(book.len(), 3);
        assert!(book.is_banned(&2, 0), "a banned peer is never the one forgotten");
        book.prune(100 * config.half_life_ms);
        assert_eq!(book.len(), 0);
    }
}
