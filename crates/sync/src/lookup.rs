//! Following the head by gossip, and parent lookups for gossiped blocks that do not attach.
//!
//! Once synced, a gossiped block whose parent is our tip is imported at once. One whose parent is
//! unknown starts a lookup: its ancestors are fetched by root, one parent at a time, first from the
//! peers that gossiped blocks of the chain (the first sender first), then from any peer whose head
//! is high enough. When the lowest fetched ancestor's parent is our tip, the chain is imported in
//! height order. Lookups are bounded in number, depth, bytes, attempts and age; a lookup that goes
//! below our tip without meeting it (a fork we do not follow) is dropped.

use syncnode_types::Block;
use syncnode_types::validity::check_link;

use crate::engine::{InFlight, PeerKey, RequestPurpose, SyncEngine};
use crate::events::{Action, RequestId};
use crate::peer_score::PeerAction;

/// One chain of gossiped blocks waiting for its ancestors.
#[derive(Debug, Clone)]
pub(crate) struct Lookup<P> {
    pub id: u64,
    /// Descending heights, each the parent of the one before: `chain[0]` is the highest.
    pub chain: Vec<Block>,
    /// Peers that gossiped blocks of this chain, first sender first.
    pub sources: Vec<P>,
    /// Peers already asked for the current missing parent.
    pub asked: Vec<P>,
    pub request: Option<RequestId>,
    pub failures: u32,
    pub not_before_ms: u64,
    pub started_ms: u64,
}

impl<P> Lookup<P> {
    fn lowest(&self) -> Option<&Block> {
        self.chain.last()
    }

    fn bytes(&self) -> usize {
        self.chain.iter().map(Block::size_bytes).sum()
    }
}

/// Every lookup in progress.
#[derive(Debug, Clone)]
pub(crate) struct Lookups<P> {
    pub list: Vec<Lookup<P>>,
    next_id: u64,
}

impl<P: PartialEq> Lookups<P> {
    pub(crate) fn new() -> Self {
        Lookups {
            list: Vec::new(),
            next_id: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    pub(crate) fn block_count(&self) -> usize {
        self.list.iter().map(|l| l.chain.len()).sum()
    }

    pub(crate) fn forget_peer(&mut self, peer: &P) {
        for lookup in &mut self.list {
            lookup.sources.retain(|p| p != peer);
        }
    }
}

impl<P: PeerKey> SyncEngine<P> {
    pub(crate) fn on_gossip(&mut self, now_ms: u64, from: P, block: Block) {
        let height = block.height();
        if height <= self.forward.head.height || !self.forward.batches.is_empty() {
            // Old, a rival at a height we have (the first seen stays), or range sync will fetch it.
            return;
        }
        let tip = self.forward.tip;
        if block.header.parent_hash == tip.hash && height == tip.height.saturating_add(1) {
            if tip
                .header
                .is_none_or(|parent| check_link(&block.header, &parent).is_ok())
            {
                self.import_forward_chain(vec![block]);
            }
            return;
        }
        let hash = block.hash();
        for lookup in &mut self.lookups.list {
            let (Some(top), Some(lowest)) = (lookup.chain.first(), lookup.chain.last()) else {
                continue;
            };
            let joins = if lookup.chain.iter().any(|b| b.hash() == hash) {
                None
            } else if block.header.parent_hash == top.hash() && height == top.height() + 1 {
                Some(true)
            } else if lowest.header.parent_hash == hash && height + 1 == lowest.height() {
                Some(false)
            } else {
                continue;
            };
            if !lookup.sources.contains(&from) {
                lookup.sources.push(from.clone());
            }
            match joins {
                Some(true) => lookup.chain.insert(0, block),
                Some(false) => lookup.chain.push(block),
                None => {}
            }
            return;
        }
        if height > tip.height.saturating_add(self.config.max_lookup_depth)
            || self.lookups.len() >= self.config.max_lookups
        {
            return;
        }
        let id = self.lookups.next_id;
        self.lookups.next_id += 1;
        self.lookups.list.push(Lookup {
            id,
            chain: vec![block],
            sources: vec![from],
            asked: Vec::new(),
            request: None,
            failures: 0,
            not_before_ms: now_ms,
            started_ms: now_ms,
        });
    }

    /// Imports lookups that reached the tip, drops hopeless ones, requests missing parents.
    pub(crate) fn lookups_drive(&mut self, now_ms: u64) {
        let max_age = self.config.max_request_timeout_ms.saturating_mul(4);
        let mut index = 0;
        while index < self.lookups.list.len() {
            let tip = self.forward.tip;
            let lookup = &self.lookups.list[index];
            let Some(lowest) = lookup.lowest() else {
                self.lookups.list.swap_remove(index);
                continue;
            };
            let idle = self.forward.batches.is_empty();
            if lowest.header.parent_hash == tip.hash && lowest.height() == tip.height.saturating_add(1) {
                if idle {
                    let mut lookup = self.lookups.list.swap_remove(index);
                    lookup.chain.reverse();
                    self.import_forward_chain(lookup.chain);
                } else {
                    index += 1;
                }
                continue;
            }
            let hopeless = lowest.height() <= tip.height.saturating_add(1)
                || lookup.chain.len() as u64 > self.config.max_lookup_depth
                || lookup.failures >= self.config.max_lookup_attempts
                || lookup.bytes() > self.config.window_bytes
                || now_ms.saturating_sub(lookup.started_ms) > max_age;
            if hopeless {
                tracing::debug!(height = lowest.height(), "parent lookup dropped");
                let lookup = self.lookups.list.swap_remove(index);
                if let Some(id) = lookup.request {
                    // Its answer will find no lookup; the peer stays busy until then.
                    tracing::trace!(?id, "request of a dropped lookup left to settle");
                }
                continue;
            }
            if idle && lookup.request.is_none() && lookup.not_before_ms <= now_ms {
                self.lookup_send(now_ms, index);
            }
            index += 1;
        }
    }

    fn lookup_send(&mut self, now_ms: u64, index: usize) {
        let Some(lookup) = self.lookups.list.get(index) else {
            return;
        };
        let Some(lowest) = lookup.lowest() else {
            return;
        };
        let (wanted, wanted_height) = (lowest.header.parent_hash, lowest.height().saturating_sub(1));
        let stale_after = self.config.status_stale_ms;
        let free = |p: &P| {
            self.peers.entries.get(p).is_some_and(|e| {
                e.in_flight.is_none()
                    && !e.proven_wrong
                    && now_ms.saturating_sub(e.status_at_ms) <= stale_after
            })
        };
        let from_sources = lookup
            .sources
            .iter()
            .find(|p| !lookup.asked.contains(p) && free(p))
            .cloned();
        let peer = from_sources.or_else(|| {
            self.peers
                .entries
                .iter()
                .find(|(p, e)| {
                    !lookup.asked.contains(p)
                        && free(p)
                        && e.credible_head().is_some_and(|h| h >= wanted_height)
                })
                .map(|(p, _)| p.clone())
        });
        let Some(peer) = peer else {
            return;
        };
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        let timeout_ms = self.config.timeout_for(lookup.failures);
        let lookup_id = lookup.id;
        self.mark_busy(&peer, id);
        self.requests.insert(
            id,
            InFlight {
                peer: peer.clone(),
                purpose: RequestPurpose::Lookup {
                    lookup: lookup_id,
                    hash: wanted,
                },
                start: wanted_height,
                count: 1,
                deadline_ms: now_ms.saturating_add(timeout_ms),
                answered: false,
            },
        );
        if let Some(lookup) = self.lookups.list.get_mut(index) {
            lookup.asked.push(peer.clone());
            lookup.request = Some(id);
        }
        self.actions.push_back(Action::SendRootRequest {
            peer,
            id,
            hashes: vec![wanted],
            timeout_ms,
        });
    }

    fn lookup_mut(&mut self, lookup: u64, id: RequestId) -> Option<&mut Lookup<P>> {
        self.lookups
            .list
            .iter_mut()
            .find(|l| l.id == lookup && l.request == Some(id))
    }

    pub(crate) fn lookup_request_failed(&mut self, now_ms: u64, lookup: u64, id: RequestId) {
        let delay = self.jitter.stretch(self.config.retry_min_delay_ms);
        if let Some(l) = self.lookup_mut(lookup, id) {
            l.request = None;
            l.failures = l.failures.saturating_add(1);
            l.not_before_ms = now_ms.saturating_add(delay);
        }
    }

    /// The answer to a root request for a lookup's missing parent.
    pub(crate) fn lookup_response(
        &mut self,
        now_ms: u64,
        id: RequestId,
        request: InFlight<P>,
        blocks: Vec<Block>,
    ) {
        let RequestPurpose::Lookup { lookup, hash } = request.purpose else {
            return;
        };
        if blocks.len() > 1 || blocks.iter().any(|b| b.hash() != hash) {
            self.penalise(
                now_ms,
                &request.peer,
                PeerAction::InvalidData,
                "block not asked for",
            );
            self.lookup_request_failed(now_ms, lookup, id);
            return;
        }
        let Some(block) = blocks.into_iter().next() else {
            // It may simply not have it: no charge, ask the next peer.
            self.lookup_request_failed(now_ms, lookup, id);
            return;
        };
        let Some(l) = self.lookup_mut(lookup, id) else {
            return;
        };
        l.request = None;
        l.asked.clear();
        let fits = l
            .lowest()
            .is_some_and(|lowest| check_link(&lowest.header, &block.header).is_ok());
        if fits {
            l.chain.push(block);
        } else {
            // The block is the one asked for, so the gossiped child named a parent it does not
            // follow (rule 1 or 2): the chain is invalid; drop it.
            l.failures = u32::MAX;
        }
    }
}
