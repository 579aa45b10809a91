//! The ban book: peers banned now and when each ban ends, bounded in size.
//!
//! Bans are indexed both by peer and by end, so a lookup, a new ban and lifting the bans that
//! ran out each cost `O(log n)` per ban touched, never a scan. At most `capacity` bans are held:
//! a new ban beyond it evicts the ban that would end soonest, and the evicted peer is handed
//! back with the expired ones so the swarm's block list shrinks with the book. Fresh identities
//! banned one after another thus cost a bounded amount of memory and time.

use std::collections::{BTreeSet, HashMap};

use libp2p::PeerId;

/// Most bans held by default.
pub const MAX_BANS: usize = 4096;

/// Bans in force, by peer and by end (in the peer manager's clock, milliseconds).
#[derive(Debug)]
pub struct BanBook {
    until: HashMap<PeerId, u64>,
    by_end: BTreeSet<(u64, PeerId)>,
    capacity: usize,
    /// Peers whose ban was evicted to make room, to be unblocked with the expired ones.
    evicted: Vec<PeerId>,
}

impl BanBook {
    /// An empty book holding at most `capacity` bans (at least one).
    pub fn new(capacity: usize) -> Self {
        BanBook {
            until: HashMap::new(),
            by_end: BTreeSet::new(),
            capacity: capacity.max(1),
            evicted: Vec::new(),
        }
    }

    /// Bans `peer` until `until_ms` (replacing an earlier ban of it), evicting the ban that ends
    /// soonest when the book is full.
    pub fn insert(&mut self, peer: PeerId, until_ms: u64) {
        if let Some(old) = self.until.insert(peer, until_ms) {
            self.by_end.remove(&(old, peer));
        } else if self.until.len() > self.capacity
            && let Some((end, victim)) = self.by_end.pop_first()
        {
            self.until.remove(&victim);
            self.evicted.push(victim);
            tracing::debug!(peer = %victim, until_ms = end, "ban book full: soonest-ending ban evicted");
        }
        self.by_end.insert((until_ms, peer));
    }

    /// Whether `peer` is banned.
    pub fn contains(&self, peer: &PeerId) -> bool {
        self.until.contains_key(peer)
    }

    /// Takes the bans ended at `now_ms` and those evicted since the last call.
    pub fn take_lifted(&mut self, now_ms: u64) -> Vec<PeerId> {
        let mut lifted = std::mem::take(&mut self.evicted);
        while let Some(&(end, peer)) = self.by_end.first() {
            if end > now_ms {
                break;
            }
            self.by_end.pop_first();
            self.until.remove(&peer);
            lifted.push(peer);
        }
        lifted
    }

    /// Each banned peer with the end of its ban.
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.by_end.iter().map(|&(end, peer)| (peer, end))
    }

    /// Number of bans held.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    /// Whether no ban is held.
    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_the_soonest_ending_ban_is_evicted() {
        let mut book = BanBook::new(3);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate().take(3) {
            book.insert(*p, 1_000 + i as u64);
        }
        book.insert(peers[3], 5_000);
        assert_eq!(book.len(), 3);
        assert!(!book.contains(&peers[0]) && book.contains(&peers[3]));
        // A new ban of a peer already banned replaces it and evicts nobody.
        book.insert(peers[3], 6_000);
        assert_eq!(book.len(), 3);
        assert_eq!(
            book.take_lifted(0),
            vec![peers[0]],
            "the evicted peer is lifted at once"
        );
        // Expired bans are lifted in order of their end, and only those.
        assert_eq!(book.take_lifted(1_001), vec![peers[1]]);
        assert_eq!(book.take_lifted(5_999), vec![peers[2]]);
        assert_eq!(book.take_lifted(6_000), vec![peers[3]]);
        assert!(book.is_empty());
    }
}
