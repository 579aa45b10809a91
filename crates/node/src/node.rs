//! The node's event loop: one task owns the sync engine and feeds it everything that happens.
//!
//! Network events, request results, verification results, import results, the engine's own
//! deadlines and the producer's slots all arrive on this task; each is handed to the engine, and the
//! engine's actions are carried out by *spawned* work: requests on their own tasks, verification on
//! the rayon pool, imports on the importer thread, reports to the network on small tasks. The loop
//! never awaits the network's command channel itself, so the network blocked on its event channel
//! and the loop blocked on the command channel cannot wait on each other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncnode_network::{
    BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, MessageId, NetworkEvent, NetworkHandle,
    PeerId, RequestError,
};
use syncnode_proto::convert::ResponseCode;
use syncnode_store::BlockStore;
use syncnode_sync::{
    Action, BackfillStart, Direction, LocalChain, PeerStatus, RequestFailure, RequestId, SyncEngine,
    SyncState,
};
use syncnode_types::{Block, BlockHeader, DevChain, SigningKey};
use tokio::sync::{mpsc, watch};

use crate::gossip::{GossipGate, Judgement, LocalView, check_with_store};
use crate::http::{PeersView, SyncView};
use crate::import::{ImportDone, ImportJob};
use crate::metrics::NodeMetrics;
use crate::verify::{Verified, Verifier};

/// How long the loop sleeps when the engine names no wake-up (it then waits for events only).
const IDLE: Duration = Duration::from_secs(3600);
/// Capacity of the loop's inbox of results.
const INBOX: usize = 1024;

/// Block production by a development key.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    pub key: SigningKey,
    pub payload_bytes: usize,
}

/// Results of spawned work, back on the loop.
enum Inbox {
    Response {
        id: RequestId,
        peer: PeerId,
        root: bool,
        result: Result<BlocksResponse, RequestError>,
    },
    Verified {
        id: RequestId,
        root: bool,
        verified: Verified,
    },
    Gossip {
        peer: PeerId,
        message_id: MessageId,
        block: Block,
        /// The stored parent's header, or the judgement if the checks off the loop made one.
        checked: Result<Option<Box<BlockHeader>>, Judgement>,
    },
}

/// Everything the loop drives.
pub struct EventLoop {
    pub store: Arc<BlockStore>,
    pub network: NetworkHandle,
    pub events: mpsc::Receiver<NetworkEvent>,
    pub engine: SyncEngine<PeerId>,
    pub verifier: Verifier,
    pub imports: mpsc::Sender<ImportJob>,
    pub import_done: mpsc::Receiver<ImportDone>,
    pub sync_view: watch::Sender<SyncView>,
    /// The engine's record of each peer (its Status), for `/peers`.
    pub peers_view: watch::Sender<PeersView>,
    pub metrics: NodeMetrics,
    pub producer: Option<ProducerConfig>,
    /// Gossip checking: blocks accepted by gossip (gossipsub forwards them on Accept, so they
    /// are not published again) and the bound on checks in flight.
    pub gossip: GossipGate,
}

/// The engine's starting view of the local chain.
pub fn local_chain(store: &BlockStore) -> LocalChain {
    let p = store.pointers();
    let backfill = (p.low.height > p.floor && p.low.height > 0).then(|| BackfillStart {
        lowest_height: p.low.height,
        // The check at open guarantees the low block is intact; a zero hash would only make
        // backfill accept nothing.
        lowest_parent_hash: store
            .block(&p.low.hash)
            .ok()
            .flatten()
            .map_or(syncnode_types::Hash::ZERO, |b| b.header.parent_hash),
        floor_height: p.floor,
    });
    LocalChain {
        head_height: p.head.height,
        head_hash: p.head.hash,
        finalized_height: p.finalized.height,
        finality_depth: store.spec().finality_depth,
        genesis_hash: p.genesis,
        backfill,
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn failure_of(e: &RequestError) -> RequestFailure {
    match e {
        RequestError::Timeout => RequestFailure::Timeout,
        RequestError::Disconnected | RequestError::NoResponse | RequestError::UnsupportedProtocol => {
            RequestFailure::Disconnected
        }
        // The network charged this wire violation already (and disconnected the peer if its
        // score fell that low); charging it again through the engine would turn one violation
        // into a ban, or not, depending on whether the disconnect reached the engine first.
        // So the engine hears only that the request failed, and retries elsewhere.
        RequestError::ProtocolViolation(_) => RequestFailure::Disconnected,
        RequestError::Refused { code, .. } => failure_of_code(*code),
        other => RequestFailure::Local(other.to_string()),
    }
}

fn failure_of_code(code: ResponseCode) -> RequestFailure {
    match code {
        ResponseCode::RateLimited => RequestFailure::RateLimited,
        ResponseCode::ResourceUnavailable | ResponseCode::ServerError => RequestFailure::ResourceUnavailable,
        // We sent a request the peer found invalid: ours to fix, not the peer's fault.
        ResponseCode::InvalidRequest | ResponseCode::Ok => {
            RequestFailure::Local(format!("peer answered {code:?} to our request"))
        }
    }
}

impl EventLoop {
    /// Runs until `shutdown` resolves or the network stops.
    /// `replay` holds network events that arrived before the loop started.
    pub async fn run(mut self, replay: Vec<NetworkEvent>, shutdown: impl std::future::Future<Output = ()>) {
        let started = Instant::now();
        let now = move || started.elapsed().as_millis() as u64;
        let (inbox_tx, mut inbox) = mpsc::channel::<Inbox>(INBOX);
        for event in replay {
            self.on_network_event(now(), event, &inbox_tx);
        }
        self.drain_actions(now(), &inbox_tx);
        // The engine's clock ticks when the engine says it next matters, not on a fixed poll.
        let wakeup = tokio::time::sleep_until(self.next_wakeup(started));
        tokio::pin!(wakeup);
        let slot_ms = self.store.spec().slot_ms.max(1);
        let mut slots = tokio::time::interval(Duration::from_millis(slot_ms));
        slots.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut producing = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = self.events.recv() => match event {
                    Some(event) => self.on_network_event(now(), event, &inbox_tx),
                    None => break,
                },
                Some(msg) = inbox.recv() => self.on_inbox(now(), msg, &inbox_tx),
                Some(done) = self.import_done.recv() => {
                    if done.id.is_none() {
                        producing = false;
                    }
                    self.on_import_done(now(), done);
                }
                _ = &mut wakeup => self.engine.tick(now()),
                _ = slots.tick(), if self.producer.is_some() && !producing => {
                    producing = self.produce();
                }
            }
            self.drain_actions(now(), &inbox_tx);
            wakeup.as_mut().reset(self.next_wakeup(started));
        }
        tracing::info!("event loop stopped");
    }

    /// Publishes the engine's record of its peers for `/peers` (on a Status, a departure, or a
    /// change of the target, which is when what a peer counts for moves).
    fn publish_peers(&self) {
        let view = self.engine.peers().map(|(p, v)| (*p, v)).collect();
        self.peers_view.send_replace(Arc::new(view));
    }

    /// When the engine's clock (milliseconds since `started`) next needs a tick.
    fn next_wakeup(&self, started: Instant) -> tokio::time::Instant {
        let at = match self.engine.next_wakeup() {
            Some(ms) => started + Duration::from_millis(ms),
            None => Instant::now() + IDLE,
        };
        tokio::time::Instant::from_std(at)
    }

    fn on_network_event(&mut self, now: u64, event: NetworkEvent, inbox: &mpsc::Sender<Inbox>) {
        match event {
            NetworkEvent::PeerStatus { peer, status } => {
                let status = PeerStatus {
                    head_height: status.head_height,
                    head_hash: status.head_hash,
                    finalized_height: status.finalized_height,
                    earliest_height: status.earliest_height,
                };
                self.engine.peer_status(now, peer, status);
                self.publish_peers();
            }
            NetworkEvent::PeerDisconnected { peer } => {
                self.engine.peer_disconnected(now, &peer);
                self.publish_peers();
            }
            NetworkEvent::GossipBlock {
                peer,
                message_id,
                block,
            } => self.check_gossip(now, peer, message_id, block, inbox),
        }
    }

    /// Runs the cheap checks of a gossiped block here and the rest on a blocking thread; the
    /// result comes back as [`Inbox::Gossip`].
    fn check_gossip(
        &mut self,
        now: u64,
        peer: PeerId,
        message_id: MessageId,
        block: Block,
        inbox: &mpsc::Sender<Inbox>,
    ) {
        let pointers = self.store.pointers();
        let view = LocalView {
            now_ms: wall_ms(),
            head_height: pointers.head.height,
            finalized_height: pointers.finalized.height,
        };
        let permit = match self.gossip.precheck(&block, view) {
            Ok(permit) => permit,
            Err(judgement) => return self.judged_gossip(now, peer, message_id, block, judgement),
        };
        let (spec, inbox) = (self.store.spec().clone(), inbox.clone());
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let checked = check_with_store(&block, &spec, &store).map(|parent| parent.map(Box::new));
            let _ = inbox.blocking_send(Inbox::Gossip {
                peer,
                message_id,
                block,
                checked,
            });
            drop(permit);
        });
    }

    /// Carries out the judgement of a gossiped block: tells gossipsub, charges the sender of an
    /// invalid block, hands the block to the engine.
    fn judged_gossip(
        &mut self,
        now: u64,
        peer: PeerId,
        message_id: MessageId,
        block: Block,
        judgement: Judgement,
    ) {
        let network = self.network.clone();
        let acceptance = judgement.acceptance();
        tokio::spawn(async move { network.report_gossip(message_id, peer, acceptance).await });
        match &judgement {
            Judgement::Accept => self.gossip.recent.insert(block.header),
            Judgement::Ignore { why, .. } => {
                tracing::debug!(%peer, "gossiped block {} ignored: {why}", block.hash());
            }
            Judgement::Reject { why } => {
                tracing::info!(%peer, "gossiped block {}: {why}", block.hash());
                let network = self.network.clone();
                tokio::spawn(async move {
                    network
                        .report(
                            peer,
                            syncnode_sync::PeerAction::InvalidData,
                            "invalid gossiped block",
                        )
                        .await
                });
            }
        }
        if judgement.to_engine() {
            self.engine.gossip_block(now, peer, block);
        }
    }

    fn on_inbox(&mut self, now: u64, msg: Inbox, inbox: &mpsc::Sender<Inbox>) {
        match msg {
            Inbox::Response {
                id,
                peer,
                root,
                result,
            } => match result {
                Ok(resp) if resp.code == ResponseCode::Ok => {
                    let n = resp.blocks.len() as u64;
                    let bytes: u64 = resp.blocks.iter().map(|b| b.payload.len() as u64).sum();
                    self.metrics.blocks_downloaded.inc_by(n);
                    self.metrics.bytes_downloaded.inc_by(bytes);
                    // The peer may take its next request while these blocks are verified.
                    self.engine.response_received(now, id);
                    let (verifier, inbox) = (self.verifier.clone(), inbox.clone());
                    tokio::spawn(async move {
                        let verified = verifier.verify(resp.blocks).await;
                        let _ = inbox.send(Inbox::Verified { id, root, verified }).await;
                    });
                }
                Ok(resp) => {
                    tracing::debug!(%peer, code = ?resp.code, "request refused: {}", resp.error_message);
                    self.engine.request_failed(now, id, failure_of_code(resp.code));
                }
                Err(e) => {
                    tracing::debug!(%peer, "request failed: {e}");
                    self.engine.request_failed(now, id, failure_of(&e));
                }
            },
            Inbox::Verified { id, root, verified } => {
                self.metrics.verify_seconds.observe(verified.seconds);
                match verified.result {
                    Ok(()) if root => self.engine.root_response(now, id, verified.blocks),
                    Ok(()) => self.engine.range_response(now, id, verified.blocks),
                    Err(e) => {
                        self.metrics.invalid_responses.inc();
                        tracing::info!("response failed verification: {e}");
                        self.engine.response_invalid(now, id, &e.to_string());
                    }
                }
            }
            Inbox::Gossip {
                peer,
                message_id,
                block,
                checked,
            } => {
                let judgement = match checked {
                    Ok(parent) => self.gossip.finish(&block, parent.map(|p| *p)),
                    Err(judgement) => judgement,
                };
                self.judged_gossip(now, peer, message_id, block, judgement);
            }
        }
    }

    fn on_import_done(&mut self, now: u64, done: ImportDone) {
        self.metrics.import_seconds.observe(done.seconds);
        if let Err(e) = &done.result {
            tracing::warn!(blocks = done.blocks, "import failed: {e}");
        } else {
            match done.direction {
                Direction::Forward => self.metrics.blocks_imported.inc_by(done.blocks as u64),
                Direction::Backfill => self.metrics.blocks_backfilled.inc_by(done.blocks as u64),
            };
            self.metrics.observe_chain(&self.store.status());
        }
        let follow = done.direction == Direction::Forward
            && done.became_head
            && done.result.is_ok()
            && (done.id.is_none() || self.engine.state() == SyncState::Synced);
        let published_by_gossip = done
            .last
            .as_ref()
            .is_some_and(|b| self.gossip.recent.contains(&b.hash()));
        if follow
            && !published_by_gossip
            && let Some(block) = done.last.clone()
        {
            // A block of our own reaches here only once durable (the importer synced it), so a
            // crash cannot take it back from under peers that hold it.
            tokio::spawn(announce(self.network.clone(), block));
        }
        match done.id {
            Some(id) => self.engine.import_result(now, id, done.result),
            None => {
                // A produced block whose sync failed still moved the store's head.
                if done.result.is_ok() || done.became_head {
                    let head = self.store.head();
                    self.engine.local_head_changed(now, head.height, head.hash);
                }
            }
        }
    }

    /// Produces a block if this node's key is scheduled next and it is in sync. Returns whether
    /// a block was handed to the importer.
    fn produce(&mut self) -> bool {
        let Some(producer) = &self.producer else {
            return false;
        };
        let state = self.engine.state();
        if !matches!(state, SyncState::Synced | SyncState::Backfilling) {
            return false;
        }
        let head = self.store.head();
        let spec = self.store.spec();
        if spec.authority_at(head.height + 1) != producer.key.public_key() {
            return false;
        }
        let Ok(Some(parent)) = self.store.block(&head.hash) else {
            return false;
        };
        let payload = DevChain::payload(head.height + 1, producer.payload_bytes);
        let timestamp = wall_ms().max(parent.header.timestamp_ms + 1);
        let block = Block::new_signed(head.height + 1, head.hash, timestamp, payload, &producer.key);
        self.metrics.produced_blocks.inc();
        tracing::info!(height = block.height(), hash = %block.hash(), "produced block");
        let job = ImportJob {
            id: None,
            blocks: vec![block],
            direction: Direction::Forward,
        };
        self.imports.try_send(job).is_ok()
    }

    /// Queues an import the engine asked for; a full queue is the engine's local failure.
    fn import(&mut self, now: u64, id: syncnode_sync::ImportId, blocks: Vec<Block>, direction: Direction) {
        let job = ImportJob {
            id: Some(id),
            blocks,
            direction,
        };
        if let Err(e) = self.imports.try_send(job) {
            let reason = format!("import queue: {e}");
            self.engine
                .import_result(now, id, Err(syncnode_sync::ImportError::Local(reason)));
        }
    }

    /// Hands a charge or a credit of the engine's to the network's score book. A credit (one per
    /// imported batch) is queued without waiting and dropped when the queue is full: it is worth
    /// less than a task per batch. A charge must arrive, so it waits for room off the loop.
    fn report(&self, peer: PeerId, action: syncnode_sync::PeerAction, reason: &'static str) {
        if action == syncnode_sync::PeerAction::UsefulResponse {
            tracing::trace!(%peer, reason, "crediting peer");
            if !self.network.try_report(peer, action, reason) {
                tracing::debug!(%peer, "credit dropped: the network's queue is full");
            }
            return;
        }
        tracing::info!(%peer, ?action, reason, "penalising peer");
        let network = self.network.clone();
        tokio::spawn(async move { network.report(peer, action, reason).await });
    }

    fn drain_actions(&mut self, now: u64, inbox: &mpsc::Sender<Inbox>) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::SendRangeRequest {
                    peer,
                    id,
                    start_height,
                    count,
                    timeout_ms,
                } => match BlocksByRangeRequest::new(start_height, count) {
                    Ok(request) => {
                        let network = self.network.clone();
                        spawn_request(inbox, id, peer, false, timeout_ms, async move {
                            network.request_range(peer, request).await
                        });
                    }
                    Err(e) => self
                        .engine
                        .request_failed(now, id, RequestFailure::Local(e.to_string())),
                },
                Action::SendRootRequest {
                    peer,
                    id,
                    hashes,
                    timeout_ms,
                } => match BlocksByRootRequest::new(hashes) {
                    Ok(request) => {
                        let network = self.network.clone();
                        spawn_request(inbox, id, peer, true, timeout_ms, async move {
                            network.request_roots(peer, request).await
                        });
                    }
                    Err(e) => self
                        .engine
                        .request_failed(now, id, RequestFailure::Local(e.to_string())),
                },
                Action::RequestStatus { peer } => {
                    // Lost only when the network's queue is full; the engine asks again later.
                    if !self.network.try_request_status(peer) {
                        tracing::debug!(%peer, "status refresh not queued");
                    }
                }
                Action::Import {
                    id,
                    blocks,
                    direction,
                } => self.import(now, id, blocks, direction),
                Action::Penalise { peer, action, reason } => self.report(peer, action, reason),
                Action::StateChanged(state) => {
                    tracing::info!(state = crate::http::state_name(state), "sync state changed");
                    self.sync_view.send_modify(|v| v.state = state);
                }
                Action::TargetChanged(target) => {
                    tracing::debug!(target, "sync target changed");
                    self.sync_view.send_modify(|v| v.target = target);
                    self.publish_peers();
                }
                Action::BackfillComplete { lowest_height } => {
                    tracing::info!(lowest_height, "backfill complete");
                    self.sync_view.send_modify(|v| v.backfill_complete = true);
                }
            }
        }
        let state = self.engine.state();
        self.metrics
            .observe_engine(&self.engine.stats(), state, self.engine.target());
        // Serving is capped while our own head is behind; backfill fetches history below a
        // head that is already at the tip, so a backfilling node serves as a synced one.
        self.network
            .set_syncing(matches!(state, SyncState::Syncing | SyncState::Stalled));
    }
}

/// Runs one outgoing request off the event loop, bounded by the engine's deadline, and posts its
/// outcome to the loop's inbox.
fn spawn_request(
    inbox: &mpsc::Sender<Inbox>,
    id: RequestId,
    peer: PeerId,
    root: bool,
    timeout_ms: u64,
    request: impl std::future::Future<Output = Result<BlocksResponse, RequestError>> + Send + 'static,
) {
    let inbox = inbox.clone();
    tokio::spawn(async move {
        let result = tokio::time::timeout(Duration::from_millis(timeout_ms), request)
            .await
            .unwrap_or(Err(RequestError::Timeout));
        let _ = inbox
            .send(Inbox::Response {
                id,
                peer,
                root,
                result,
            })
            .await;
    });
}

/// Publishes `block` by gossip.
async fn announce(network: NetworkHandle, block: Block) {
    if let Err(e) = network.publish(block).await {
        tracing::debug!("publish: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_sync::{LocalChain, PeerStatus, SyncConfig};
    use syncnode_types::Hash;

    /// One bad frame is charged once (by the network, which already did when the request failed
    /// with `ProtocolViolation`): the engine must not emit a second charge for it.
    #[test]
    fn a_wire_violation_already_charged_by_the_network_is_not_charged_again() {
        let local = LocalChain {
            head_height: 0,
            head_hash: Hash::ZERO,
            finalized_height: 0,
            finality_depth: 16,
            genesis_hash: Hash::ZERO,
            backfill: None,
        };
        let mut engine = SyncEngine::new(SyncConfig::default(), local, 1).expect("a valid config");
        let peer = PeerId::random();
        let status = PeerStatus {
            head_height: 100,
            head_hash: Hash::ZERO,
            finalized_height: 0,
            earliest_height: 0,
        };
        engine.peer_status(0, peer, status);
        let mut request = None;
        while let Some(action) = engine.poll_action() {
            if let Action::SendRangeRequest { id, .. } = action {
                request = Some(id);
            }
        }
        let id = request.expect("the engine asks the peer for blocks");
        let error = RequestError::ProtocolViolation("frame of 16777217 bytes".into());
        engine.request_failed(1, id, failure_of(&error));
        while let Some(action) = engine.poll_action() {
            assert!(
                !matches!(action, Action::Penalise { .. }),
                "charged twice for one violation: {action:?}"
            );
        }
    }
}
