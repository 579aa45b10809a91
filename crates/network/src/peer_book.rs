//! Where peers can be dialled, and what the node needs to remember them across a restart.
//!
//! [`PeerAddrs`] keeps, for each peer recently connected, the addresses it can be dialled at: the
//! address we dialled it at ourselves (it worked), then the listen addresses it announced by
//! identify. It is bounded in peers and in addresses per peer; the peer touched longest ago makes
//! room. [`KnownPeer`] is one peer as the network hands it to the node's peers file
//! ([`crate::NetworkHandle::known_peers`]): its addresses, score, whether it showed it is on our
//! chain, and how much of a ban it has left.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Most peers whose addresses are kept.
pub const MAX_PEERS: usize = 1024;
/// Most addresses kept per peer.
pub const MAX_ADDRS_PER_PEER: usize = 4;

/// Dialable addresses by peer, bounded; the least recently touched peer is evicted first.
#[derive(Debug, Default)]
pub struct PeerAddrs {
    by_peer: HashMap<PeerId, (u64, Vec<Multiaddr>)>,
    by_touch: BTreeMap<u64, PeerId>,
    next_touch: u64,
}

impl PeerAddrs {
    /// Records that `peer` can be dialled at `addr` (an address that worked goes first, an
    /// announced one after those already known).
    pub fn note(&mut self, peer: PeerId, addr: &Multiaddr, worked: bool) {
        let Some(addr) = without_peer_id(addr) else {
            return;
        };
        let touch = self.next_touch;
        self.next_touch += 1;
        let (old_touch, addrs) = self.by_peer.entry(peer).or_insert((touch, Vec::new()));
        self.by_touch.remove(old_touch);
        *old_touch = touch;
        self.by_touch.insert(touch, peer);
        addrs.retain(|a| *a != addr);
        if worked {
            addrs.insert(0, addr);
        } else {
            addrs.push(addr);
        }
        addrs.truncate(MAX_ADDRS_PER_PEER);
        while self.by_peer.len() > MAX_PEERS {
            let Some((_, victim)) = self.by_touch.pop_first() else {
                break;
            };
            self.by_peer.remove(&victim);
        }
    }

    /// The addresses `peer` can be dialled at, each ending in `/p2p/<peer>`.
    pub fn dialable(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.by_peer.get(peer).map_or_else(Vec::new, |(_, addrs)| {
            addrs
                .iter()
                .map(|a| a.clone().with(Protocol::P2p(*peer)))
                .collect()
        })
    }

    /// Number of peers with addresses.
    pub fn len(&self) -> usize {
        self.by_peer.len()
    }

    /// Whether no address is known.
    pub fn is_empty(&self) -> bool {
        self.by_peer.is_empty()
    }
}

/// `addr` without a trailing `/p2p/...`, or `None` for an address nobody can dial back (a relay
/// circuit, or one that is only a peer id).
fn without_peer_id(addr: &Multiaddr) -> Option<Multiaddr> {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    let dialable = addr.iter().next().is_some_and(|p| {
        matches!(
            p,
            Protocol::Ip4(_) | Protocol::Ip6(_) | Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)
        )
    }) && !addr.iter().any(|p| matches!(p, Protocol::P2pCircuit));
    dialable.then_some(addr)
}

/// One peer as the node's peers file needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownPeer {
    pub peer_id: PeerId,
    /// Where it can be dialled, each ending in `/p2p/<peer>`.
    pub addrs: Vec<Multiaddr>,
    pub score: f64,
    /// Connected now.
    pub connected: bool,
    /// What is left of its ban, if it is banned.
    pub ban_left: Option<Duration>,
}

impl crate::service::Service {
    /// Connected and banned peers as the peers file needs them.
    pub(crate) fn known_peers(&self) -> Vec<KnownPeer> {
        let bans: HashMap<PeerId, u64> = self.manager.bans_left().collect();
        let mut out: Vec<KnownPeer> = self
            .manager
            .summaries()
            .into_iter()
            .filter(|s| s.connected || bans.contains_key(&s.peer_id))
            .map(|s| KnownPeer {
                peer_id: s.peer_id,
                addrs: self.addrs.dialable(&s.peer_id),
                score: s.score,
                connected: s.connected,
                ban_left: bans.get(&s.peer_id).map(|&ms| Duration::from_millis(ms)),
            })
            .collect();
        // A ban the score book forgot is still a ban.
        let listed: std::collections::HashSet<PeerId> = out.iter().map(|k| k.peer_id).collect();
        for (peer, ms) in bans {
            if !listed.contains(&peer) {
                out.push(KnownPeer {
                    peer_id: peer,
                    addrs: Vec::new(),
                    score: 0.0,
                    connected: false,
                    ban_left: Some(Duration::from_millis(ms)),
                });
            }
        }
        out
    }

    /// Bans each peer again for what was left of its ban in an earlier run.
    pub(crate) fn restore_bans(&mut self, bans: &[(PeerId, Duration)]) {
        for (peer, left) in bans {
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            let until = self.manager.now_ms().saturating_add(left_ms);
            self.manager.restore_ban(peer, until);
            self.swarm.behaviour_mut().blocked.block_peer(*peer);
        }
        if !bans.is_empty() {
            tracing::info!(bans = bans.len(), "bans of the last run restored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")
    }

    #[test]
    fn addresses_that_worked_go_first_and_both_bounds_hold() {
        let mut book = PeerAddrs::default();
        let p = PeerId::random();
        for port in 1..=6 {
            book.note(p, &tcp(port), false);
        }
        book.note(p, &tcp(9).with(Protocol::P2p(p)), true);
        let addrs = book.dialable(&p);
        assert_eq!(addrs.len(), MAX_ADDRS_PER_PEER);
        assert_eq!(addrs[0], tcp(9).with(Protocol::P2p(p)));
        assert!(book.dialable(&PeerId::random()).is_empty());

        let first = PeerId::random();
        book.note(first, &tcp(1), true);
        for _ in 0..MAX_PEERS {
            book.note(PeerId::random(), &tcp(2), true);
        }
        assert_eq!(book.len(), MAX_PEERS);
        assert!(
            book.dialable(&first).is_empty(),
            "the least recently touched peer went first"
        );
    }

    #[test]
    fn addresses_nobody_can_dial_back_are_not_kept() {
        let mut book = PeerAddrs::default();
        let p = PeerId::random();
        let only_id: Multiaddr = Multiaddr::empty().with(Protocol::P2p(p));
        book.note(p, &only_id, true);
        let circuit = tcp(1)
            .with(Protocol::P2p(PeerId::random()))
            .with(Protocol::P2pCircuit);
        book.note(p, &circuit, true);
        assert!(book.is_empty());
    }
}
