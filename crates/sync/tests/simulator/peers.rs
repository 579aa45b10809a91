//! The simulated peers' side: what each serves, the Status it sends, and how it answers range and
//! root requests per its kind.

use super::*;

impl Sim {
    /// The blocks a peer serves, and its real head.
    pub(super) fn source(&self, peer: &SimPeer) -> (&'static [Block], Height) {
        let fx = fixture();
        let head = self.net_head.saturating_sub(peer.lag);
        match (peer.kind, self.fork_source) {
            (Kind::Fork, 1) => (&fx.fork_a, head),
            (Kind::Fork, _) => (&fx.fork_b, head),
            (Kind::ShortFork, _) => (&fx.fork_c, (head + FORK_C_LEAD).min(FORK_C_END)),
            _ => (&fx.chain, head),
        }
    }

    pub(super) fn status_of(&self, peer: &SimPeer) -> PeerStatus {
        let (blocks, head) = self.source(peer);
        let claimed = if peer.kind == Kind::HeadLiar {
            head + 100_000
        } else {
            head
        };
        PeerStatus {
            head_height: claimed,
            head_hash: blocks.get(claimed as usize).map_or(Hash::of(b"lie"), Block::hash),
            finalized_height: head.saturating_sub(32),
            earliest_height: peer.earliest,
        }
    }

    pub(super) fn answer_range(&mut self, peer: u32, id: RequestId, start: Height, count: u64) {
        let Some(p) = self.peers.get(&peer) else { return };
        let epoch = p.epoch;
        if !p.connected {
            self.schedule(
                1,
                Event::Reply {
                    peer,
                    epoch,
                    id,
                    outcome: Outcome::Fail(RequestFailure::Disconnected),
                },
            );
            return;
        }
        let kind = p.kind;
        let (source, head) = self.source(p);
        let end = start.saturating_add(count).min(head + 1);
        let mut blocks: Vec<Block> = if start < p.earliest || start > head {
            Vec::new()
        } else {
            source[start as usize..end as usize].to_vec()
        };
        let delay = self.latency(peer);
        let outcome = match kind {
            Kind::Silent => return,
            Kind::Flaky if self.rng.random_bool(0.25) => return, // never answers
            Kind::Flaky if self.rng.random_bool(0.1) => Outcome::Fail(RequestFailure::RateLimited),
            Kind::Disconnecting if self.rng.random_bool(0.2) => {
                let at = self.rng.random_range(0..=delay);
                self.schedule(at, Event::Drop { peer, epoch });
                return;
            }
            Kind::BadSignature if !blocks.is_empty() && self.rng.random_bool(0.5) => {
                let i = self.rng.random_range(0..blocks.len());
                blocks[i].signature.0[3] ^= 0x40;
                Outcome::Range(blocks)
            }
            Kind::WrongHeights if self.rng.random_bool(0.5) => {
                let shifted = (start + 1..end + 1)
                    .filter_map(|h| source.get(h as usize).cloned())
                    .collect();
                Outcome::Range(shifted)
            }
            _ => Outcome::Range(blocks),
        };
        self.schedule(
            delay,
            Event::Reply {
                peer,
                epoch,
                id,
                outcome,
            },
        );
    }

    pub(super) fn answer_root(&mut self, peer: u32, id: RequestId, hashes: Vec<Hash>) {
        let fx = fixture();
        let Some(p) = self.peers.get(&peer) else { return };
        let epoch = p.epoch;
        if !p.connected {
            self.schedule(
                1,
                Event::Reply {
                    peer,
                    epoch,
                    id,
                    outcome: Outcome::Fail(RequestFailure::Disconnected),
                },
            );
            return;
        }
        if p.kind == Kind::Silent {
            return;
        }
        let (source, head) = self.source(p);
        let blocks = hashes
            .iter()
            .filter_map(|h| fx.by_hash.get(h))
            .filter(|(_, height)| *height <= head)
            .filter_map(|(_, height)| source.get(*height as usize))
            .filter(|b| hashes.contains(&b.hash()))
            .cloned()
            .collect();
        let delay = self.latency(peer);
        self.schedule(
            delay,
            Event::Reply {
                peer,
                epoch,
                id,
                outcome: Outcome::Root(blocks),
            },
        );
    }

    pub(super) fn connected_epoch(&self, peer: u32, epoch: u64) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.connected && p.epoch == epoch)
    }
}
