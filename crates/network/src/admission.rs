//! Admission that keeps room for discovery, and pruning back to the peer limit.
//!
//! A node that refused every newcomer once it had `max_peers` would leave a newcomer whose
//! bootnodes are all full with no one: Kademlia and identify run over those same connections,
//! so it could not even learn who else exists. So the limit has three numbers:
//! - **`max_peers`**, the peers a node keeps;
//! - **the outbound target** ([`outbound_target`], a quarter below `max_peers`): our own dials
//!   (bootnodes, discovery, Kademlia's queries) stop there, so in a network of nodes that all
//!   dial until their target, most nodes still have inbound room for a newcomer;
//! - **`excess_inbound`** slots above `max_peers`, for inbound peers only. A peer let in over the
//!   limit gets `excess_grace` in which it may run identify and a Kademlia lookup through us, and
//!   is then a candidate for pruning like any other peer. No one is let in beyond
//!   `max_peers + excess_inbound`, so the excess slots cannot be used to hold more than a few of
//!   the node's connections, and the handshake door and per-IP limits still apply before a
//!   connection gets here.
//!
//! On each maintenance tick the peers above `max_peers` that are not in their grace are pruned,
//! in [`prune_order`]: inbound before outbound (the peers we chose, we keep), lower score first
//! (peers that served us blocks have earned credit in the score book; peers that misbehaved have
//! lost it), and among equals the one connected most recently (it just found other peers through
//! us and has the most other options; the older ones make the mesh we gossip over). A pruned
//! peer is not let in over the limit again for [`PRUNED_COOLDOWN`] ([`Cooldowns`]), so a peer
//! whose discovery keeps dialling us cannot hold an excess slot by coming back at once; it is
//! still welcome when we have room below `max_peers`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a pruned peer is refused the excess slots.
pub const PRUNED_COOLDOWN: Duration = Duration::from_secs(60);

/// Most pruned peers remembered; beyond it the one whose cooldown ends first is forgotten.
pub const MAX_COOLDOWNS: usize = 1024;

/// Pruned peers and the end of their cooldown, at most [`MAX_COOLDOWNS`].
#[derive(Debug, Default)]
pub struct Cooldowns {
    until: HashMap<PeerId, Instant>,
}

impl Cooldowns {
    /// Remembers that `peer` was pruned at `now`.
    pub fn insert(&mut self, peer: PeerId, now: Instant) {
        if self.until.len() >= MAX_COOLDOWNS && !self.until.contains_key(&peer) {
            self.until.retain(|_, end| *end > now);
            if self.until.len() >= MAX_COOLDOWNS {
                let first = self.until.iter().min_by_key(|(_, end)| **end).map(|(p, _)| *p);
                if let Some(first) = first {
                    self.until.remove(&first);
                }
            }
        }
        self.until.insert(peer, now + PRUNED_COOLDOWN);
    }

    /// Whether `peer` was pruned less than [`PRUNED_COOLDOWN`] before `now`.
    pub fn contains(&self, peer: &PeerId, now: Instant) -> bool {
        self.until.get(peer).is_some_and(|end| *end > now)
    }

    /// Peers remembered.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

use libp2p::PeerId;

/// Most peers a node dials on its own: a quarter below `max_peers` (rounded up, at least 1), so
/// that the rest of its slots stay open to peers that dial it.
pub fn outbound_target(max_peers: usize) -> usize {
    max_peers.saturating_sub(max_peers / 4).max(1)
}

/// One connected peer as the pruning sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub peer: PeerId,
    /// We dialled it (its first connection was ours).
    pub outbound: bool,
    /// Its score in the node's score book.
    pub score: f64,
    /// When its first connection was established.
    pub since: Instant,
    /// End of its grace, for a peer let in over `max_peers`.
    pub grace_until: Option<Instant>,
}

impl Candidate {
    fn in_grace(&self, now: Instant) -> bool {
        self.grace_until.is_some_and(|end| end > now)
    }
}

/// The peers to disconnect so that at most `max_peers` remain besides those still in their
/// grace; the first of them is the one to go first.
pub fn prune_order(mut peers: Vec<Candidate>, max_peers: usize, now: Instant) -> Vec<PeerId> {
    peers.retain(|c| !c.in_grace(now));
    let over = peers.len().saturating_sub(max_peers);
    if over == 0 {
        return Vec::new();
    }
    peers.sort_by(|a, b| {
        a.outbound
            .cmp(&b.outbound)
            .then(a.score.partial_cmp(&b.score).unwrap_or(Ordering::Equal))
            .then(b.since.cmp(&a.since))
    });
    peers.into_iter().take(over).map(|c| c.peer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn peer(outbound: bool, score: f64, age_s: u64, grace_s: Option<u64>, now: Instant) -> Candidate {
        Candidate {
            peer: PeerId::random(),
            outbound,
            score,
            since: now - Duration::from_secs(age_s),
            grace_until: grace_s.map(|s| now + Duration::from_secs(s)),
        }
    }

    #[test]
    fn cooldowns_end_and_stay_bounded() {
        let now = Instant::now();
        let mut c = Cooldowns::default();
        let p = PeerId::random();
        c.insert(p, now);
        assert!(c.contains(&p, now + PRUNED_COOLDOWN - Duration::from_secs(1)));
        assert!(!c.contains(&p, now + PRUNED_COOLDOWN));
        for i in 0..MAX_COOLDOWNS as u64 + 10 {
            c.insert(PeerId::random(), now + Duration::from_millis(i));
        }
        assert_eq!(c.len(), MAX_COOLDOWNS);
        assert!(!c.contains(&p, now), "the earliest to end was forgotten first");
    }

    #[test]
    fn the_outbound_target_leaves_a_quarter_for_inbound() {
        assert_eq!(outbound_target(12), 9);
        assert_eq!(outbound_target(50), 38);
        assert_eq!(outbound_target(3), 3);
        assert_eq!(outbound_target(1), 1);
        assert_eq!(outbound_target(0), 1);
    }

    #[test]
    fn nothing_is_pruned_at_or_below_the_limit_nor_while_in_grace() {
        let now = Instant::now();
        let regular: Vec<_> = (0..3).map(|_| peer(false, 0.0, 60, None, now)).collect();
        assert!(prune_order(regular.clone(), 3, now).is_empty());
        let mut with_newcomer = regular;
        with_newcomer.push(peer(false, 0.0, 1, Some(5), now));
        assert!(
            prune_order(with_newcomer, 3, now).is_empty(),
            "a newcomer in its grace neither counts nor goes"
        );
    }

    #[test]
    fn inbound_low_score_and_recent_peers_go_first() {
        let now = Instant::now();
        let outbound_bad = peer(true, -10.0, 60, None, now);
        let serving = peer(false, 5.0, 60, None, now);
        let old_idle = peer(false, 0.0, 600, None, now);
        let newcomer = peer(false, 0.0, 10, Some(0), now);
        let misbehaved = peer(false, -3.0, 300, None, now);
        let all = vec![
            outbound_bad.clone(),
            serving.clone(),
            old_idle.clone(),
            newcomer.clone(),
            misbehaved.clone(),
        ];
        assert_eq!(prune_order(all.clone(), 4, now), vec![misbehaved.peer]);
        assert_eq!(
            prune_order(all.clone(), 2, now),
            vec![misbehaved.peer, newcomer.peer, old_idle.peer]
        );
        assert_eq!(
            prune_order(all, 0, now).last(),
            Some(&outbound_bad.peer),
            "an outbound peer goes last, whatever its score"
        );
    }
}
