//! Starting from a trusted checkpoint: before sync starts, the checkpoint block is fetched by root
//! from the first peers that connect, checked against the trusted hash and height and rules 3–5,
//! and anchored in the store (head, finalized and backfill low at it). The engine then syncs
//! forward from it and backfills history below it.

use std::time::Duration;

use syncnode_network::{BlocksByRootRequest, GossipAcceptance, NetworkEvent, NetworkHandle};
use syncnode_store::BlockStore;
use syncnode_types::validity::check_standalone;
use syncnode_types::{Block, Hash, Height};
use tokio::sync::mpsc;

/// A trusted block: `HEIGHT:HASH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub height: Height,
    pub hash: Hash,
}

impl std::str::FromStr for Checkpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (h, hash) = s.split_once(':').ok_or("a checkpoint is HEIGHT:HASH")?;
        let height = h
            .parse()
            .map_err(|_| format!("checkpoint height {h:?} is not a number"))?;
        let hash = hash.parse().map_err(|e| format!("checkpoint hash: {e}"))?;
        if height == 0 {
            return Err("a checkpoint at height 0 is genesis; start without one".into());
        }
        Ok(Checkpoint { height, hash })
    }
}

/// What the store says about a checkpoint before anything is fetched.
pub enum Need {
    /// Already anchored, or already on our canonical chain: nothing to do.
    Have,
    /// A fresh store: fetch the block.
    Fetch,
}

/// Whether the store needs the checkpoint fetched; an error if it holds another chain.
pub fn need(store: &BlockStore, cp: Checkpoint) -> anyhow::Result<Need> {
    let p = store.pointers();
    if p.anchor
        .is_some_and(|a| a.height == cp.height && a.hash == cp.hash)
        || store.hash_at(cp.height)? == Some(cp.hash)
    {
        return Ok(Need::Have);
    }
    if p.head.height == 0 {
        return Ok(Need::Fetch);
    }
    anyhow::bail!(
        "the store already holds a chain up to {} without checkpoint {}:{}; use another --data-dir",
        p.head.height,
        cp.height,
        cp.hash
    )
}

/// Checks a fetched block against the trusted checkpoint and the chain's rules 3–5.
pub fn check(block: &Block, cp: Checkpoint, spec: &syncnode_types::ChainSpec) -> Result<(), String> {
    if block.hash() != cp.hash || block.height() != cp.height {
        return Err(format!(
            "peer sent block {} at {}, not the checkpoint",
            block.hash(),
            block.height()
        ));
    }
    check_standalone(block, spec).map_err(|e| e.to_string())
}

/// Waits for peers, asks each for the checkpoint block until one serves it, and anchors the store.
/// Network events seen meanwhile are returned for the engine (gossip is answered `Ignore`).
pub async fn fetch_and_anchor(
    store: &BlockStore,
    network: &NetworkHandle,
    events: &mut mpsc::Receiver<NetworkEvent>,
    cp: Checkpoint,
) -> anyhow::Result<Vec<NetworkEvent>> {
    let mut seen = Vec::new();
    let mut asked = std::collections::HashSet::new();
    let mut reminder = tokio::time::interval(Duration::from_secs(10));
    reminder.tick().await;
    tracing::info!(height = cp.height, hash = %cp.hash, "fetching the checkpoint block from peers");
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = reminder.tick() => {
                tracing::info!(asked = asked.len(), "still waiting for a peer that serves the checkpoint block");
                continue;
            }
        };
        let Some(event) = event else {
            anyhow::bail!("the network stopped before the checkpoint was fetched")
        };
        match &event {
            NetworkEvent::GossipBlock { peer, message_id, .. } => {
                network
                    .report_gossip(message_id.clone(), *peer, GossipAcceptance::Ignore)
                    .await;
                continue;
            }
            NetworkEvent::PeerStatus { peer, status }
                if status.head_height >= cp.height && asked.insert(*peer) =>
            {
                let peer = *peer;
                seen.push(event);
                let request = BlocksByRootRequest::new(vec![cp.hash])?;
                match network.request_roots(peer, request).await {
                    Ok(resp) => match resp.blocks.first() {
                        Some(block) => match check(block, cp, store.spec()) {
                            Ok(()) => {
                                store.start_from_checkpoint(block)?;
                                tracing::info!(%peer, height = cp.height, "checkpoint anchored");
                                return Ok(seen);
                            }
                            Err(why) => {
                                tracing::warn!(%peer, "bad checkpoint block: {why}");
                                network
                                    .report(
                                        peer,
                                        syncnode_network::PeerAction::InvalidData,
                                        "bad checkpoint block",
                                    )
                                    .await;
                            }
                        },
                        None => tracing::info!(%peer, "peer does not have the checkpoint block"),
                    },
                    Err(e) => tracing::info!(%peer, "checkpoint request failed: {e}"),
                }
            }
            _ => seen.push(event),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let spec = syncnode_types::ChainSpec::dev("cp", 1, 0, 1000, 4).expect("spec");
        let blocks = syncnode_types::DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, 5, 8);
        let b = &blocks[2];
        let cp: Checkpoint = format!("{}:{}", b.height(), b.hash()).parse().expect("parses");
        assert!(check(b, cp, &spec).is_ok());
        assert!(check(&blocks[3], cp, &spec).is_err());
        let mut forged = b.clone();
        forged.signature.0[0] ^= 1;
        assert!(check(&forged, cp, &spec).is_err());
        assert!("12".parse::<Checkpoint>().is_err());
        assert!(format!("0:{}", b.hash()).parse::<Checkpoint>().is_err());
        assert!("5:zz".parse::<Checkpoint>().is_err());
    }
}
