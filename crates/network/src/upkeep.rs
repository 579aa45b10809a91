//! The network task's upkeep, on its maintenance tick: bootnodes dialled at start and again while
//! the node is alone (with exponential backoff), peers whose goodbye grace ended disconnected,
//! peers above the peer limit pruned,
//! expired bans lifted, rate limiter and score book pruned, and the gauges refreshed.

use std::time::Instant;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol as AddrProtocol;

use crate::service::{REDIAL_MAX, REDIAL_MIN, Service};

impl Service {
    /// Makes a bootnode known to Kademlia and dials it.
    pub(crate) fn add_bootnode(&mut self, addr: Multiaddr) {
        if let (Some(AddrProtocol::P2p(peer)), Some(kad)) =
            (addr.iter().last(), self.swarm.behaviour_mut().kad.as_mut())
        {
            kad.add_address(&peer, addr.clone());
        }
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootnode");
        }
    }

    /// A node that lost every peer (a restart of its bootnode, a disconnect after a penalty) dials
    /// its bootnodes again, backing off exponentially while nobody answers.
    pub(crate) fn redial_bootnodes_if_alone(&mut self) {
        let now = Instant::now();
        if self.manager.connected_count() > 0 {
            self.redial_backoff = REDIAL_MIN;
            self.next_redial = now + REDIAL_MIN;
            return;
        }
        if self.bootnodes.is_empty() || now < self.next_redial {
            return;
        }
        tracing::debug!(bootnodes = self.bootnodes.len(), "no peers: redialling bootnodes");
        for addr in self.bootnodes.clone() {
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "cannot redial bootnode");
            }
        }
        self.next_redial = now + self.redial_backoff;
        self.redial_backoff = (self.redial_backoff * 2).min(REDIAL_MAX);
    }

    /// Disconnects the peers above `max_peers` whose grace is over, in the order of
    /// [`crate::admission::prune_order`].
    fn prune_excess_peers(&mut self) {
        let candidates = self.manager.prune_candidates();
        let now = Instant::now();
        for peer in crate::admission::prune_order(candidates, self.max_peers, now) {
            tracing::debug!(%peer, "pruned: above the peer limit");
            self.metrics.pruned();
            self.swarm.behaviour_mut().peer_limit.cooldowns.insert(peer, now);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    pub(crate) fn maintain(&mut self) {
        let now = Instant::now();
        while let Some(&(at, peer)) = self.closing.front() {
            if at > now {
                break;
            }
            self.closing.pop_front();
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for peer in self.manager.expired_bans() {
            tracing::info!(%peer, "ban expired");
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        self.prune_excess_peers();
        self.manager.prune();
        self.limiter.prune(Instant::now());
        self.redial_bootnodes_if_alone();
        self.metrics
            .set_peers(self.manager.connected_count(), self.manager.banned_count());
        let gate = &self.serve_ctx.gate;
        self.metrics.set_serving_bytes(gate.held(), gate.peak());
        let (lo, hi) = self.manager.score_range();
        self.metrics.set_score_range(lo, hi);
    }
}
