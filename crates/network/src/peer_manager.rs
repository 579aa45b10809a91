//! The peer manager: who is connected, and its score.
//!
//! This is the node's one score book: the sync engine keeps none and reports what it saw
//! (charges, and credits for imported blocks) to be applied here. The policy is the protocol
//! crate's [`PeerScores`] (which the engine's simulator applies the same way); this module only
//! adds a clock (milliseconds since the manager was made), the
//! connection bookkeeping, and the list of bans it must lift when they expire. A peer's Status is
//! not kept here: it goes to the node as [`crate::NetworkEvent::PeerStatus`], and the sync engine
//! holds it. It decides nothing about libp2p: the event loop turns its [`Verdict`]s into
//! disconnects and blocks.

use std::collections::HashMap;
use std::time::Instant;

use crate::admission::Candidate;
use crate::ban_book::{BanBook, MAX_BANS};

use libp2p::PeerId;
use syncnode_proto::peer_score::{PeerAction, PeerScores, ScoreConfig, Verdict};

/// One peer as seen from the outside (`/peers`, metrics, tests).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerSummary {
    pub peer_id: PeerId,
    pub connected: bool,
    /// Open connections to the peer.
    pub connections: u32,
    pub score: f64,
    pub banned: bool,
    /// Identify agent string.
    pub agent: Option<String>,
}

#[derive(Debug, Clone)]
struct PeerInfo {
    connections: u32,
    agent: Option<String>,
    /// Whether its first connection was ours.
    outbound: bool,
    /// When its first connection was established.
    since: Instant,
    /// End of its grace, for a peer let in over the peer limit (see [`crate::admission`]).
    grace_until: Option<Instant>,
}

/// Connected peers, their scores and bans.
#[derive(Debug)]
pub struct PeerManager {
    scores: PeerScores<PeerId>,
    epoch: Instant,
    peers: HashMap<PeerId, PeerInfo>,
    /// Bans in force, with their end in the manager's clock; lifted by [`Self::expired_bans`].
    bans: BanBook,
}

impl PeerManager {
    /// An empty manager with the given score policy.
    pub fn new(config: ScoreConfig) -> Self {
        PeerManager {
            scores: PeerScores::new(config),
            epoch: Instant::now(),
            peers: HashMap::new(),
            bans: BanBook::new(MAX_BANS),
        }
    }

    /// The manager's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies an action to a peer's score. A `Ban` verdict is remembered for later lifting.
    pub fn charge(&mut self, peer: &PeerId, action: PeerAction) -> Verdict {
        let now = self.now_ms();
        let verdict = self.scores.apply(peer, action, now);
        if let Verdict::Ban { until_ms } = verdict {
            self.bans.insert(*peer, until_ms);
        }
        verdict
    }

    /// Bans a peer outright (another genesis); returns the end of the ban in the manager's clock.
    pub fn ban(&mut self, peer: &PeerId) -> u64 {
        let now = self.now_ms();
        let until = self.scores.ban(peer, now);
        self.bans.insert(*peer, until);
        until
    }

    /// Bans a peer until `until_ms` in the manager's clock: a ban carried over from an earlier
    /// run, for what was left of it.
    pub fn restore_ban(&mut self, peer: &PeerId, until_ms: u64) {
        let now = self.now_ms();
        self.scores.ban(peer, now);
        self.bans.insert(*peer, until_ms);
    }

    /// Each banned peer with what is left of its ban, in milliseconds.
    pub fn bans_left(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        let now = self.now_ms();
        self.bans
            .iter()
            .map(move |(peer, end)| (peer, end.saturating_sub(now)))
    }

    /// Whether the peer is banned: from the ban until the maintenance tick lifts it (the same
    /// span in which the swarm's block list refuses it).
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.contains(peer)
    }

    /// Bans that have run out, or were evicted from the full ban book, since the last call; the
    /// caller unblocks these peers.
    pub fn expired_bans(&mut self) -> Vec<PeerId> {
        let now = self.now_ms();
        self.bans.take_lifted(now)
    }

    /// Number of bans in force.
    pub fn banned_count(&self) -> usize {
        self.bans.len()
    }

    /// A connection to `peer` was established (`outbound` when we dialled it); returns whether
    /// it is the first. A first connection admitted over the peer limit comes with the end of
    /// its grace.
    pub fn connection_opened(&mut self, peer: PeerId, outbound: bool, grace_until: Option<Instant>) -> bool {
        let info = self.peers.entry(peer).or_insert_with(|| PeerInfo {
            connections: 0,
            agent: None,
            outbound,
            since: Instant::now(),
            grace_until,
        });
        info.connections += 1;
        info.connections == 1
    }

    /// Every connected peer as the pruning of [`crate::admission`] sees it.
    pub fn prune_candidates(&self) -> Vec<Candidate> {
        let now = self.now_ms();
        self.peers
            .iter()
            .map(|(peer, info)| Candidate {
                peer: *peer,
                outbound: info.outbound,
                score: self.scores.score(peer, now),
                since: info.since,
                grace_until: info.grace_until,
            })
            .collect()
    }

    /// A connection to `peer` closed; returns whether it was the last.
    pub fn connection_closed(&mut self, peer: &PeerId, remaining: u32) -> bool {
        if remaining == 0 {
            self.peers.remove(peer);
            true
        } else {
            if let Some(info) = self.peers.get_mut(peer) {
                info.connections = remaining;
            }
            false
        }
    }

    /// Whether any connection to `peer` is open.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Connected peers.
    pub fn connected(&self) -> impl Iterator<Item = &PeerId> {
        self.peers.keys()
    }

    /// Number of connected peers.
    pub fn connected_count(&self) -> usize {
        self.peers.len()
    }

    /// Records a connected peer's identify agent string (truncated to 128 bytes).
    pub fn set_agent(&mut self, peer: &PeerId, agent: &str) {
        if let Some(info) = self.peers.get_mut(peer) {
            let mut end = agent.len().min(128);
            while !agent.is_char_boundary(end) {
                end -= 1;
            }
            info.agent = Some(agent[..end].to_owned());
        }
    }

    /// Lowest and highest score among remembered peers (0, 0 when none).
    pub fn score_range(&self) -> (f64, f64) {
        let snapshot = self.scores.snapshot(self.now_ms());
        if snapshot.is_empty() {
            return (0.0, 0.0);
        }
        snapshot.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, s, _)| {
            (lo.min(*s), hi.max(*s))
        })
    }

    /// Forgets neutral entries of the score book.
    pub fn prune(&mut self) {
        let now = self.now_ms();
        self.scores.prune(now);
    }

    /// Connected peers and every peer the score book remembers.
    pub fn summaries(&self) -> Vec<PeerSummary> {
        let now = self.now_ms();
        let mut out: Vec<PeerSummary> = self
            .peers
            .iter()
            .map(|(peer, info)| PeerSummary {
                peer_id: *peer,
                connected: true,
                connections: info.connections,
                score: self.scores.score(peer, now),
                banned: self.bans.contains(peer),
                agent: info.agent.clone(),
            })
            .collect();
        for (peer, score, _) in self.scores.snapshot(now) {
            let banned = self.bans.contains(&peer);
            if !self.peers.contains_key(&peer) {
                out.push(PeerSummary {
                    peer_id: peer,
                    connected: false,
                    connections: 0,
                    score,
                    banned,
                    agent: None,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_disconnect_then_ban_and_bans_expire() {
        let config = ScoreConfig {
            ban_duration_ms: 0,
            ..ScoreConfig::default()
        };
        let mut m = PeerManager::new(config);
        let p = PeerId::random();
        assert!(m.connection_opened(p, false, None));
        assert!(!m.connection_opened(p, true, None));
        assert!(
            !m.prune_candidates()[0].outbound,
            "the first connection tells the direction"
        );
        assert_eq!(m.charge(&p, PeerAction::ProtocolViolation), Verdict::Disconnect);
        assert!(matches!(
            m.charge(&p, PeerAction::ProtocolViolation),
            Verdict::Ban { .. }
        ));
        // Zero-length ban: expired at once.
        assert_eq!(m.expired_bans(), vec![p]);
        assert!(m.expired_bans().is_empty());
        assert!(!m.connection_closed(&p, 1));
        assert!(m.connection_closed(&p, 0));
        let s = m.summaries();
        assert_eq!(s.len(), 1);
        assert!(!s[0].connected && s[0].score < 0.0);
    }

    #[test]
    fn bans_of_fresh_identities_stay_bounded() {
        let mut m = PeerManager::new(ScoreConfig::default());
        for _ in 0..MAX_BANS + 100 {
            m.ban(&PeerId::random());
        }
        assert_eq!(m.banned_count(), MAX_BANS);
        assert_eq!(
            m.expired_bans().len(),
            100,
            "the evicted bans are lifted from the swarm too"
        );
    }
}
