//! The node's side of the network: a cloneable [`NetworkHandle`] of commands, and the
//! [`NetworkEvent`]s the network sends back. Both channels are bounded.

use std::time::Duration;

use libp2p::gossipsub::MessageId;
use libp2p::{Multiaddr, PeerId};
use syncnode_proto::peer_score::PeerAction;
use syncnode_proto::{BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, Status};
use syncnode_types::Block;
use tokio::sync::{mpsc, oneshot};

use crate::error::{NetworkError, PublishError, RequestError};
use crate::gossip::GossipAcceptance;
use crate::peer_manager::PeerSummary;

/// What the network tells the node.
#[derive(Debug, Clone)]
pub enum NetworkEvent {
    /// A peer on our chain sent its Status (on connect, and again every status interval).
    PeerStatus { peer: PeerId, status: Status },
    /// The last connection to a peer closed.
    PeerDisconnected { peer: PeerId },
    /// A block arrived by gossip. The node must answer with
    /// [`NetworkHandle::report_gossip`]; it is forwarded only on `Accept`.
    GossipBlock {
        peer: PeerId,
        message_id: MessageId,
        block: Block,
    },
}

pub(crate) type Reply<T> = oneshot::Sender<T>;

pub(crate) enum Command {
    Range {
        peer: PeerId,
        request: BlocksByRangeRequest,
        reply: Reply<Result<BlocksResponse, RequestError>>,
    },
    Root {
        peer: PeerId,
        request: BlocksByRootRequest,
        reply: Reply<Result<BlocksResponse, RequestError>>,
    },
    Publish {
        block: Block,
        reply: Reply<Result<(), PublishError>>,
    },
    Report {
        peer: PeerId,
        action: PeerAction,
        reason: &'static str,
    },
    RequestStatus {
        peer: PeerId,
    },
    ReportGossip {
        message_id: MessageId,
        source: PeerId,
        acceptance: GossipAcceptance,
    },
    Peers {
        reply: Reply<Vec<PeerSummary>>,
    },
    KnownPeers {
        reply: Reply<Vec<crate::peer_book::KnownPeer>>,
    },
    GossipScore {
        peer: PeerId,
        reply: Reply<Option<f64>>,
    },
    ListenAddrs {
        reply: Reply<Vec<Multiaddr>>,
    },
    Dial {
        addr: Multiaddr,
        reply: Reply<Result<(), NetworkError>>,
    },
    Shutdown,
}

/// A cloneable handle on the running network. Every method is cheap to call from any task; the
/// work happens on the network's own task.
#[derive(Clone, Debug)]
pub struct NetworkHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) local_peer_id: PeerId,
    /// Outer bound on a request's wait (the protocol deadline plus a margin), in case the
    /// network task itself is wedged.
    pub(crate) request_guard: Duration,
    /// Whether our own sync is behind, read by the serving gate.
    pub(crate) syncing: crate::serve_gate::SyncingFlag,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Range { .. } => "Range",
            Command::Root { .. } => "Root",
            Command::Publish { .. } => "Publish",
            Command::Report { .. } => "Report",
            Command::RequestStatus { .. } => "RequestStatus",
            Command::ReportGossip { .. } => "ReportGossip",
            Command::Peers { .. } => "Peers",
            Command::KnownPeers { .. } => "KnownPeers",
            Command::GossipScore { .. } => "GossipScore",
            Command::ListenAddrs { .. } => "ListenAddrs",
            Command::Dial { .. } => "Dial",
            Command::Shutdown => "Shutdown",
        })
    }
}

impl NetworkHandle {
    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// Tells the serving gate whether our own sync is behind: while it is, blocks served are
    /// capped by `serve_blocks_per_sec_while_syncing`. Sets an atomic; never waits.
    pub fn set_syncing(&self, syncing: bool) {
        self.syncing.set(syncing);
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    async fn request(
        &self,
        make: impl FnOnce(Reply<Result<BlocksResponse, RequestError>>) -> Command,
    ) -> Result<BlocksResponse, RequestError> {
        match tokio::time::timeout(self.request_guard, self.ask(make)).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(RequestError::Stopped),
            Err(_) => Err(RequestError::Timeout),
        }
    }

    /// Asks `peer` for blocks by range. `Ok` only for a decodable `OK` answer; its blocks are
    /// not yet checked against the request (heights, links, signatures: the engine's job).
    pub async fn request_range(
        &self,
        peer: PeerId,
        request: BlocksByRangeRequest,
    ) -> Result<BlocksResponse, RequestError> {
        self.request(|reply| Command::Range { peer, request, reply })
            .await
    }

    /// Asks `peer` for blocks by root; see [`Self::request_range`].
    pub async fn request_roots(
        &self,
        peer: PeerId,
        request: BlocksByRootRequest,
    ) -> Result<BlocksResponse, RequestError> {
        self.request(|reply| Command::Root { peer, request, reply }).await
    }

    /// Publishes a block we produced or imported on the blocks topic.
    pub async fn publish(&self, block: Block) -> Result<(), PublishError> {
        self.ask(|reply| Command::Publish { block, reply })
            .await
            .unwrap_or(Err(PublishError::Stopped))
    }

    /// Reports what a peer did; the score book decides whether to disconnect or ban it.
    pub async fn report(&self, peer: PeerId, action: PeerAction, reason: &'static str) {
        let _ = self.commands.send(Command::Report { peer, action, reason }).await;
    }

    /// Like [`Self::report`] without waiting: `false` if the command queue is full or the
    /// network has stopped (the report is then lost).
    pub fn try_report(&self, peer: PeerId, action: PeerAction, reason: &'static str) -> bool {
        self.commands
            .try_send(Command::Report { peer, action, reason })
            .is_ok()
    }

    /// Asks a connected `peer` for a fresh Status now (it arrives as [`NetworkEvent::PeerStatus`]),
    /// without waiting: `false` if the command queue is full or the network has stopped.
    pub fn try_request_status(&self, peer: PeerId) -> bool {
        self.commands.try_send(Command::RequestStatus { peer }).is_ok()
    }

    /// Reports the node's verdict on a gossiped block ([`NetworkEvent::GossipBlock`]).
    pub async fn report_gossip(&self, message_id: MessageId, source: PeerId, acceptance: GossipAcceptance) {
        let _ = self
            .commands
            .send(Command::ReportGossip {
                message_id,
                source,
                acceptance,
            })
            .await;
    }

    /// Connected peers and every peer the score book remembers (scored or banned).
    pub async fn peers(&self) -> Vec<PeerSummary> {
        self.ask(|reply| Command::Peers { reply })
            .await
            .unwrap_or_default()
    }

    /// The connected peers and the banned ones, with where to dial them and what is left of
    /// each ban: what the node's peers file remembers across a restart.
    pub async fn known_peers(&self) -> Vec<crate::peer_book::KnownPeer> {
        self.ask(|reply| Command::KnownPeers { reply })
            .await
            .unwrap_or_default()
    }

    /// Gossipsub's own score of `peer` (`None` for a peer it does not know).
    pub async fn gossip_score(&self, peer: PeerId) -> Option<f64> {
        self.ask(|reply| Command::GossipScore { peer, reply })
            .await
            .flatten()
    }

    /// The addresses we listen on.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.ask(|reply| Command::ListenAddrs { reply })
            .await
            .unwrap_or_default()
    }

    /// Dials an address (refused for a banned peer). Success means the dial started.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetworkError> {
        self.ask(|reply| Command::Dial { addr, reply })
            .await
            .unwrap_or(Err(NetworkError::Stopped))
    }

    /// Stops the network task; every handle's later calls fail with `Stopped`.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
    }
}
