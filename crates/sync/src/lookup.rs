//! Following the head by gossip, and parent lookups for gossiped blocks that do not attach.
//!
//! A gossiped block whose parent is our tip is imported at once, also while range sync has batches
//! out (a peer's Status a block ahead starts one): the batches are cut again above it. Once
//! synced, a gossiped block whose parent is unknown starts a lookup: its ancestors are fetched by
//! root, one parent at a time, first from the peers that gossiped blocks of the chain (the first
//! sender first), then from any peer whose head is high enough. When the lowest fetched
//! ancestor's parent is our tip, the chain is imported in height order. While range sync has
//! batches out, a gossiped block above its target joins or starts a lookup that asks for nothing;
//! when range sync moves the tip into or up to a lookup's chain, the blocks above the tip import.
//! Lookups are bounded in number, depth, bytes, attempts and age.
//!
//! A lookup whose chain reaches our tip's height without meeting our chain is a branch that left
//! ours at or below our tip. When it is longer than our chain (its top is above our tip), the
//! peers that gossiped it are asked for a fresh Status at once ([`Drive::forks`]): their Status
//! then names the longer head, the target rises, and their first batch, which does not link,
//! starts the fork search of forward sync (`forward.rs`), which fetches their chain by range and
//! lets the store's fork choice decide. A branch no longer than ours is dropped (equal heights:
//! the first seen stays), and so is the lookup either way.

use syncnode_types::validity::check_link;
use syncnode_types::{Block, Hash, Height};

use crate::config::SyncConfig;
use crate::events::RequestId;
use crate::forward::{ChainEnd, Forward};
use crate::jitter::Jitter;
use crate::peers::Peers;
use syncnode_proto::peer_score::PeerAction;

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

    /// Range sync moved the tip into the chain: the blocks above the tip continue it, those at
    /// or below it are dropped, and the parent it was asking for is no longer wanted.
    fn trim_to(&mut self, tip: &ChainEnd) {
        let next = tip.height.saturating_add(1);
        let at = self
            .chain
            .iter()
            .position(|b| b.height() == next && b.header.parent_hash == tip.hash);
        if let Some(at) = at.filter(|at| at + 1 < self.chain.len()) {
            self.chain.truncate(at + 1);
            self.request = None;
            self.asked.clear();
        }
    }
}

/// Every lookup in progress.
#[derive(Debug, Clone)]
pub(crate) struct Lookups<P> {
    pub list: Vec<Lookup<P>>,
    next_id: u64,
}

impl<P: Clone + Ord> Lookups<P> {
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

    /// When a lookup may ask again, or grows too old and is dropped.
    pub(crate) fn wakeups(&self, config: &SyncConfig) -> impl Iterator<Item = u64> + '_ {
        let max_age = config.max_request_timeout_ms.saturating_mul(4);
        self.list.iter().flat_map(move |l| {
            let retry = l.request.is_none().then_some(l.not_before_ms);
            retry
                .into_iter()
                .chain([l.started_ms.saturating_add(max_age).saturating_add(1)])
        })
    }

    pub(crate) fn forget_peer(&mut self, peer: &P) {
        for lookup in &mut self.list {
            lookup.sources.retain(|p| p != peer);
        }
    }
}

/// A root request a lookup wants sent: `hash` (at `height`) from `peer`, with `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootRequest<P> {
    pub lookup: u64,
    pub peer: P,
    pub hash: Hash,
    pub height: Height,
    pub timeout_ms: u64,
}

/// What [`Lookups::drive`] asks of the engine.
#[derive(Debug)]
pub(crate) struct Drive<P> {
    /// Chains that reached the tip, to import in order.
    pub imports: Vec<Vec<Block>>,
    /// Missing parents to request.
    pub sends: Vec<RootRequest<P>>,
    /// Peers that gossiped a branch longer than ours that leaves our chain at or below our tip:
    /// their fork is to be fetched.
    pub forks: Vec<P>,
}

/// What a lookup's answer showed of the peer that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// Fine (or the lookup is gone): nothing to charge.
    Fine,
    /// It sent a block it was not asked for.
    NotAsked,
}

impl<P: Clone + Ord> Lookups<P> {
    /// A gossiped block: one on the tip is returned for import at once, even while forward sync
    /// fetches ranges (not `idle`): the importer keeps the order, and the batches above the tip
    /// are cut again from the new tip. When forward sync is idle, one with an unknown parent
    /// joins or starts a lookup; otherwise range sync will fetch it.
    pub(crate) fn on_gossip(
        &mut self,
        config: &SyncConfig,
        forward: &Forward<P>,
        idle: bool,
        now_ms: u64,
        from: P,
        block: Block,
    ) -> Option<Block> {
        let height = block.height();
        if height <= forward.head.height {
            // Old, or a rival at a height we have (the first seen stays).
            return None;
        }
        let tip = forward.tip;
        if block.header.parent_hash == tip.hash
            && height == tip.height.saturating_add(1)
            && forward.takes_blocks_on_the_tip(idle)
        {
            let links = tip
                .header
                .is_none_or(|parent| check_link(&block.header, &parent).is_ok());
            return links.then_some(block);
        }
        if !idle && height <= forward.target {
            // Range sync fetches it. One above the target waits in a lookup for range sync to
            // reach it (lookups ask for nothing meanwhile).
            return None;
        }
        if self.join(&from, &block) {
            return None;
        }
        if height > tip.height.saturating_add(config.max_lookup_depth) || self.len() >= config.max_lookups {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.list.push(Lookup {
            id,
            chain: vec![block],
            sources: vec![from],
            asked: Vec::new(),
            request: None,
            failures: 0,
            not_before_ms: now_ms,
            started_ms: now_ms,
        });
        None
    }

    /// Adds a gossiped block to the lookup whose chain it extends (or already holds it).
    fn join(&mut self, from: &P, block: &Block) -> bool {
        let (height, hash) = (block.height(), block.hash());
        for lookup in &mut self.list {
            let (Some(top), Some(lowest)) = (lookup.chain.first(), lookup.chain.last()) else {
                continue;
            };
            let above = block.header.parent_hash == top.hash() && height == top.height() + 1;
            let below = lowest.header.parent_hash == hash && height + 1 == lowest.height();
            let held = lookup.chain.iter().any(|b| b.hash() == hash);
            if !(held || above || below) {
                continue;
            }
            if !lookup.sources.contains(from) {
                lookup.sources.push(from.clone());
            }
            if !held && above {
                lookup.chain.insert(0, block.clone());
            } else if !held {
                lookup.chain.push(block.clone());
            }
            return true;
        }
        false
    }

    /// Imports lookups that reached the tip (returned in order, the tip moved past each), drops
    /// hopeless ones, says which missing parents to request from whom, and which peers showed a
    /// longer fork.
    pub(crate) fn drive(
        &mut self,
        config: &SyncConfig,
        forward: &mut Forward<P>,
        idle: bool,
        peers: &Peers<P>,
        now_ms: u64,
    ) -> Drive<P> {
        let max_age = config.max_request_timeout_ms.saturating_mul(4);
        let (mut imports, mut sends) = (Vec::new(), Vec::<RootRequest<P>>::new());
        let mut forks = Vec::new();
        let mut index = 0;
        while index < self.list.len() {
            let tip = forward.tip;
            let lookup = &mut self.list[index];
            lookup.trim_to(&tip);
            let Some(lowest) = lookup.lowest() else {
                self.list.swap_remove(index);
                continue;
            };
            if lowest.header.parent_hash == tip.hash && lowest.height() == tip.height.saturating_add(1) {
                if forward.takes_blocks_on_the_tip(idle) {
                    let mut lookup = self.list.swap_remove(index);
                    lookup.chain.reverse();
                    if let Some(last) = lookup.chain.last() {
                        forward.chain_offered(ChainEnd::of(last));
                    }
                    imports.push(lookup.chain);
                } else {
                    index += 1;
                }
                continue;
            }
            // It reached our tip's height without meeting our chain: a fork.
            let forked = lowest.height() <= tip.height.saturating_add(1);
            let hopeless = forked
                || lookup.chain.len() as u64 > config.max_lookup_depth
                || lookup.failures >= config.max_lookup_attempts
                || lookup.bytes() > config.window_bytes
                || now_ms.saturating_sub(lookup.started_ms) > max_age;
            let longer = lookup.chain.first().is_some_and(|top| top.height() > tip.height);
            if forked && longer && lookup.failures < config.max_lookup_attempts {
                // A longer branch: its senders' chain is fetched by range (see the module).
                tracing::debug!(height = lowest.height(), "parent lookup met a longer fork");
                forks.extend(lookup.sources.iter().cloned());
            }
            if hopeless {
                // A request it has out finds no lookup when answered; the peer stays busy until then.
                tracing::debug!(height = lowest.height(), "parent lookup dropped");
                self.list.swap_remove(index);
                continue;
            }
            if idle && lookup.request.is_none() && lookup.not_before_ms <= now_ms {
                let taken: Vec<P> = sends.iter().map(|s| s.peer.clone()).collect();
                sends.extend(self.pick(config, peers, &taken, index, now_ms));
            }
            index += 1;
        }
        Drive {
            imports,
            sends,
            forks,
        }
    }

    /// Whom lookup `index` asks for its missing parent: a peer that gossiped its chain (the first
    /// sender first), else any peer whose head is high enough; free, credible, not asked yet.
    fn pick(
        &self,
        config: &SyncConfig,
        peers: &Peers<P>,
        taken: &[P],
        index: usize,
        now_ms: u64,
    ) -> Option<RootRequest<P>> {
        let lookup = self.list.get(index)?;
        let lowest = lookup.lowest()?;
        let (wanted, wanted_height) = (lowest.header.parent_hash, lowest.height().saturating_sub(1));
        let free = |p: &P| {
            !lookup.asked.contains(p)
                && !taken.contains(p)
                && peers.entries.get(p).is_some_and(|e| {
                    e.in_flight.is_empty()
                        && !e.proven_wrong
                        && now_ms.saturating_sub(e.status_at_ms) <= config.status_stale_ms
                })
        };
        let peer = lookup.sources.iter().find(|p| free(p)).cloned().or_else(|| {
            peers
                .entries
                .iter()
                .find(|(p, e)| free(p) && e.credible_head().is_some_and(|h| h >= wanted_height))
                .map(|(p, _)| p.clone())
        })?;
        Some(RootRequest {
            lookup: lookup.id,
            peer,
            hash: wanted,
            height: wanted_height,
            timeout_ms: config.timeout_for(lookup.failures),
        })
    }

    /// Request `id` for lookup `lookup` was sent to `peer`.
    pub(crate) fn sent(&mut self, lookup: u64, id: RequestId, peer: P) {
        if let Some(l) = self.list.iter_mut().find(|l| l.id == lookup) {
            l.asked.push(peer);
            l.request = Some(id);
        }
    }

    fn lookup_mut(&mut self, lookup: u64, id: RequestId) -> Option<&mut Lookup<P>> {
        self.list
            .iter_mut()
            .find(|l| l.id == lookup && l.request == Some(id))
    }

    /// Request `id` of lookup `lookup` brought nothing: it backs off and asks the next peer.
    pub(crate) fn request_failed(
        &mut self,
        config: &SyncConfig,
        jitter: &mut Jitter,
        lookup: u64,
        id: RequestId,
        now_ms: u64,
    ) {
        let delay = jitter.stretch(config.retry_min_delay_ms);
        if let Some(l) = self.lookup_mut(lookup, id) {
            l.request = None;
            l.failures = l.failures.saturating_add(1);
            l.not_before_ms = now_ms.saturating_add(delay);
        }
    }

    /// The answer to a root request for lookup `lookup`'s missing parent `hash`.
    pub(crate) fn response(
        &mut self,
        config: &SyncConfig,
        jitter: &mut Jitter,
        (lookup, id, hash): (u64, RequestId, Hash),
        blocks: Vec<Block>,
        now_ms: u64,
    ) -> Answered {
        if blocks.len() > 1 || blocks.iter().any(|b| b.hash() != hash) {
            self.request_failed(config, jitter, lookup, id, now_ms);
            return Answered::NotAsked;
        }
        let Some(block) = blocks.into_iter().next() else {
            // It may simply not have it: no charge, ask the next peer.
            self.request_failed(config, jitter, lookup, id, now_ms);
            return Answered::Fine;
        };
        let Some(l) = self.lookup_mut(lookup, id) else {
            return Answered::Fine;
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
        Answered::Fine
    }
}

impl Answered {
    /// The charge it earns, if any.
    pub(crate) fn charge(self) -> Option<(PeerAction, &'static str)> {
        match self {
            Answered::Fine => None,
            Answered::NotAsked => Some((PeerAction::InvalidData, "block not asked for")),
        }
    }
}
