//! The network task: owns the swarm, reacts to its events, to commands from handles, to
//! finished serving tasks and to its timers. Nothing here blocks or waits on a peer: block
//! serving runs on other tasks, and every send to the node is `try_send` or a bounded queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageId};
use libp2p::metrics::{Metrics as Libp2pMetrics, Recorder};
use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::request_response::{InboundRequestId, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use prometheus_client::registry::Registry;
use syncnode_proto::peer_score::{PeerAction, Verdict};
use syncnode_proto::{BlocksResponse, KAD_PROTOCOL, Status, pb};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::behaviour::{Behaviour, BehaviourEvent, build_swarm};
use crate::codec::WireRequest;
use crate::config::NetworkConfig;
use crate::error::{NetworkError, PublishError, RequestError};
use crate::gossip::{self, MAX_GOSSIP_MESSAGE};
use crate::handle::{Command, NetworkEvent, NetworkHandle};
use crate::metrics::NetworkMetrics;
use crate::peer_manager::PeerManager;
use crate::rate_limit::{Protocol, RateLimiter};
use crate::serve::{BlockSource, ServeContext};
use crate::serve_gate::{HeldBytes, ServeGate};

/// A finished serving task's answer, to be sent on the swarm task.
pub(crate) struct ServeDone {
    pub protocol: Protocol,
    pub request_id: InboundRequestId,
    pub peer: PeerId,
    pub channel: libp2p::request_response::ResponseChannel<pb::BlocksResponse>,
    pub response: pb::BlocksResponse,
    pub code: &'static str,
    pub blocks: usize,
    /// The room in the byte budget the response's blocks hold, until it is written.
    pub held: Option<HeldBytes>,
}

/// An outbound block request waiting for its answer.
pub(crate) struct Pending {
    pub peer: PeerId,
    pub started: Instant,
    pub reply: oneshot::Sender<Result<BlocksResponse, RequestError>>,
}

/// The network task's state.
pub(crate) struct Service {
    pub swarm: Swarm<Behaviour>,
    pub genesis: syncnode_types::Hash,
    pub max_peers: usize,
    /// How long a peer admitted over `max_peers` is kept before it may be pruned.
    pub excess_grace: Duration,
    pub topic: IdentTopic,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<NetworkEvent>,
    /// Lifecycle events waiting for room in `events` (bounded by `max_pending_events`).
    pub pending_events: VecDeque<NetworkEvent>,
    pub max_pending_events: usize,
    pub local_status: watch::Receiver<Status>,
    pub manager: PeerManager,
    pub limiter: RateLimiter,
    pub serve_ctx: Arc<ServeContext>,
    pub serve_tx: mpsc::Sender<ServeDone>,
    pub serve_rx: mpsc::Receiver<ServeDone>,
    /// Serving tasks running or waiting for a permit.
    pub serving: usize,
    pub serve_limit: usize,
    /// Serving tasks by requester (entries at zero removed), each at most `max_serving_per_peer`.
    pub serving_by_peer: HashMap<PeerId, usize>,
    pub max_serving_per_peer: usize,
    /// The byte budget's room held by the block responses libp2p is still writing, by request.
    pub writing: HashMap<(Protocol, InboundRequestId), HeldBytes>,
    pub pending_range: HashMap<OutboundRequestId, Pending>,
    pub pending_root: HashMap<OutboundRequestId, Pending>,
    pub pending_status: HashMap<OutboundRequestId, (PeerId, Instant)>,
    pub status_in_flight: HashSet<PeerId>,
    /// Disconnects and bans to carry out once the answer to an inbound request has gone out.
    pub after_response: HashMap<(Protocol, InboundRequestId), (PeerId, Verdict)>,
    /// Peers to disconnect once a grace period after their answer is over, oldest first (at most
    /// `MAX_CLOSING`): closing at once can make the peer's stack drop the answer unread.
    pub closing: VecDeque<(Instant, PeerId)>,
    pub metrics: NetworkMetrics,
    pub libp2p_metrics: Libp2pMetrics,
    /// Bootnodes and the peers remembered from an earlier run, redialled with backoff while the
    /// node has no peer at all.
    pub bootnodes: Vec<Multiaddr>,
    /// Where the peers we met can be dialled, for the node's peers file.
    pub addrs: crate::peer_book::PeerAddrs,
    pub next_redial: Instant,
    pub redial_backoff: Duration,
}

/// First and longest wait between redials of the bootnodes while the node has no peer.
/// The first and the longest wait before bootnodes are dialled again while the node is alone.
pub(crate) const REDIAL_MIN: Duration = Duration::from_secs(2);
pub(crate) const REDIAL_MAX: Duration = Duration::from_secs(60);

/// Starts the network: builds the swarm, starts listening (waiting up to 5 s until every
/// listener has its address, so [`NetworkHandle::listen_addrs`] is complete at once), dials
/// the bootnodes and spawns the network task on the current tokio runtime.
pub async fn start(
    config: NetworkConfig,
    source: Arc<dyn BlockSource>,
    local_status: watch::Receiver<Status>,
    registry: &mut Registry,
) -> Result<(NetworkHandle, mpsc::Receiver<NetworkEvent>), NetworkError> {
    check_limits(&config)?;
    let libp2p_metrics = Libp2pMetrics::new(registry);
    let metrics = NetworkMetrics::register(registry);
    let mut swarm = build_swarm(&config, registry)?;
    let local_peer_id = *swarm.local_peer_id();

    let mut waiting = HashSet::new();
    for addr in &config.listen {
        let id = swarm.listen_on(addr.clone()).map_err(|e| NetworkError::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        waiting.insert(id);
    }

    let (commands_tx, commands) = mpsc::channel(config.command_buffer);
    let (events, events_rx) = mpsc::channel(config.event_buffer);
    let channels = Channels {
        commands,
        events,
        local_status,
    };
    let mut service = Service::new(&config, swarm, source, channels, metrics, libp2p_metrics);
    service.wait_for_listeners(waiting).await?;
    service.restore_bans(&config.restored_bans);
    for addr in config.bootnodes.iter().chain(&config.known_peers) {
        service.add_bootnode(addr.clone());
    }
    let handle = NetworkHandle {
        commands: commands_tx,
        local_peer_id,
        request_guard: config.request_timeout + Duration::from_secs(5),
        syncing: service.serve_ctx.gate.syncing_flag(),
    };
    tokio::spawn(service.run(config.status_interval, config.maintenance_interval));
    Ok((handle, events_rx))
}

/// Refuses a configuration whose limits, buffers or intervals are zero.
fn check_limits(config: &NetworkConfig) -> Result<(), NetworkError> {
    if config.max_peers == 0
        || config.max_connections_per_peer == 0
        || config.max_concurrent_serving == 0
        || config.max_serving_per_peer == 0
        || config.event_buffer == 0
        || config.command_buffer == 0
        || config.request_timeout.is_zero()
        || config.status_interval.is_zero()
        || config.maintenance_interval.is_zero()
    {
        return Err(NetworkError::Config(
            "limits, buffers and intervals must be non-zero".into(),
        ));
    }
    Ok(())
}

/// The channels between the network task and the rest of the node.
struct Channels {
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    local_status: watch::Receiver<Status>,
}

impl Service {
    /// The task's state before it runs: nothing served, nothing pending.
    fn new(
        config: &NetworkConfig,
        swarm: Swarm<Behaviour>,
        source: Arc<dyn BlockSource>,
        channels: Channels,
        metrics: NetworkMetrics,
        libp2p_metrics: Libp2pMetrics,
    ) -> Self {
        let serve_limit = config.max_concurrent_serving + config.max_queued_serving;
        let (serve_tx, serve_rx) = mpsc::channel(serve_limit.max(1));
        let serve_ctx = Arc::new(ServeContext {
            source,
            permits: Arc::new(Semaphore::new(config.max_concurrent_serving)),
            gate: ServeGate::with_syncing_cap(
                config.max_serving_bytes,
                config.serve_blocks_per_sec,
                config.serve_blocks_per_sec_while_syncing,
            ),
            budget: config.request_timeout.mul_f64(0.75),
        });
        Service {
            swarm,
            genesis: config.genesis_hash,
            max_peers: config.max_peers as usize,
            excess_grace: config.excess_grace,
            topic: IdentTopic::new(syncnode_proto::gossip_topic(&config.genesis_hash)),
            commands: channels.commands,
            events: channels.events,
            pending_events: VecDeque::new(),
            max_pending_events: config.event_buffer.saturating_mul(4),
            local_status: channels.local_status,
            manager: PeerManager::new(config.score),
            limiter: RateLimiter::new(config.rate_limits),
            serve_ctx,
            serve_tx,
            serve_rx,
            serving: 0,
            serve_limit,
            serving_by_peer: HashMap::new(),
            max_serving_per_peer: config.max_serving_per_peer,
            writing: HashMap::new(),
            pending_range: HashMap::new(),
            pending_root: HashMap::new(),
            pending_status: HashMap::new(),
            status_in_flight: HashSet::new(),
            after_response: HashMap::new(),
            closing: VecDeque::new(),
            metrics,
            libp2p_metrics,
            bootnodes: config
                .bootnodes
                .iter()
                .chain(&config.known_peers)
                .cloned()
                .collect(),
            addrs: crate::peer_book::PeerAddrs::default(),
            next_redial: Instant::now() + REDIAL_MIN,
            redial_backoff: REDIAL_MIN,
        }
    }
}

impl Service {
    async fn wait_for_listeners(
        &mut self,
        mut waiting: HashSet<libp2p::core::transport::ListenerId>,
    ) -> Result<(), NetworkError> {
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        while !waiting.is_empty() {
            tokio::select! {
                event = self.swarm.select_next_some() => {
                    match &event {
                        SwarmEvent::NewListenAddr { listener_id, .. } => {
                            waiting.remove(listener_id);
                        }
                        SwarmEvent::ListenerClosed { addresses, reason: Err(e), .. } => {
                            return Err(NetworkError::Listen {
                                addr: format!("{addresses:?}"),
                                reason: e.to_string(),
                            });
                        }
                        _ => {}
                    }
                    self.on_swarm_event(event);
                }
                _ = &mut deadline => {
                    tracing::warn!("listeners not ready after 5 s");
                    break;
                }
            }
        }
        Ok(())
    }

    async fn run(mut self, status_interval: Duration, maintenance_interval: Duration) {
        let mut status_tick = tokio::time::interval(status_interval);
        status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut maintenance = tokio::time::interval(maintenance_interval);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A second sender, so a reserved slot does not borrow `self`.
        let events = self.events.clone();
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
                Some(done) = self.serve_rx.recv() => self.on_served(done),
                _ = status_tick.tick() => self.refresh_status(),
                _ = maintenance.tick() => self.maintain(),
                permit = events.reserve(), if !self.pending_events.is_empty() => {
                    if let (Ok(permit), Some(event)) = (permit, self.pending_events.pop_front()) {
                        permit.send(event);
                    }
                }
            }
        }
        tracing::info!("network task stopped");
    }

    /// Sends a lifecycle event to the node, queueing it (bounded) while the channel is full.
    pub(crate) fn emit(&mut self, event: NetworkEvent) {
        if self.pending_events.is_empty() {
            match self.events.try_send(event) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.pending_events.push_back(event);
                    return;
                }
            }
        }
        if self.pending_events.len() >= self.max_pending_events {
            // Drop the oldest Status (a newer one will come); never a disconnect.
            let oldest_status = self
                .pending_events
                .iter()
                .position(|e| matches!(e, NetworkEvent::PeerStatus { .. }));
            match oldest_status {
                Some(i) => {
                    self.pending_events.remove(i);
                }
                None => {
                    tracing::warn!("event queue full; dropping an event");
                    return;
                }
            }
        }
        self.pending_events.push_back(event);
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if endpoint.is_dialer() {
                    self.addrs.note(peer_id, endpoint.get_remote_address(), true);
                }
                let over_limit = self.manager.connected_count() >= self.max_peers;
                let grace_until = over_limit.then(|| Instant::now() + self.excess_grace);
                if self
                    .manager
                    .connection_opened(peer_id, endpoint.is_dialer(), grace_until)
                {
                    if grace_until.is_some() {
                        tracing::debug!(peer = %peer_id, "admitted over the peer limit for its grace");
                    }
                    self.send_status(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if self.manager.connection_closed(&peer_id, num_established) {
                    self.status_in_flight.remove(&peer_id);
                    self.limiter.forget(&peer_id, Instant::now());
                    self.emit(NetworkEvent::PeerDisconnected { peer: peer_id });
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(event) => {
                self.libp2p_metrics.record(&event);
                if let identify::Event::Received { peer_id, info, .. } = event {
                    self.manager.set_agent(&peer_id, &info.agent_version);
                    for addr in info
                        .listen_addrs
                        .iter()
                        .take(crate::peer_book::MAX_ADDRS_PER_PEER)
                    {
                        self.addrs.note(peer_id, addr, false);
                    }
                    let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
                    if let (true, Some(kad)) = (speaks_kad, self.swarm.behaviour_mut().kad.as_mut()) {
                        for addr in info.listen_addrs.into_iter().take(16) {
                            kad.add_address(&peer_id, addr);
                        }
                    }
                }
            }
            BehaviourEvent::Ping(event) => self.libp2p_metrics.record(&event),
            BehaviourEvent::Kad(event) => {
                self.libp2p_metrics.record(&event);
                if let kad::Event::RoutingUpdated { peer, .. } = event {
                    self.maybe_dial(peer, Vec::new());
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                        kad.add_address(&peer, addr.clone());
                    }
                    self.maybe_dial(peer, vec![addr]);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Gossipsub(event) => {
                self.libp2p_metrics.record(&event);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = event
                {
                    self.on_gossip(propagation_source, message_id, &message.data);
                }
            }
            BehaviourEvent::Status(event) => self.on_status_event(event),
            BehaviourEvent::Range(event) => self.on_blocks_event(Protocol::BlocksByRange, event),
            BehaviourEvent::Root(event) => self.on_blocks_event(Protocol::BlocksByRoot, event),
            BehaviourEvent::Blocked(e)
            | BehaviourEvent::Limits(e)
            | BehaviourEvent::PeerLimit(e)
            | BehaviourEvent::IpLimit(e) => match e {},
        }
    }

    /// Dials a discovered peer unless it is connected, banned, or we are full.
    fn maybe_dial(&mut self, peer: PeerId, addresses: Vec<Multiaddr>) {
        if peer == *self.swarm.local_peer_id()
            || self.manager.is_connected(&peer)
            || self.manager.is_banned(&peer)
            || self.manager.connected_count() >= crate::admission::outbound_target(self.max_peers)
        {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addresses)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial of discovered peer failed");
        }
    }

    fn on_gossip(&mut self, source: PeerId, message_id: MessageId, data: &[u8]) {
        let gs = &mut self.swarm.behaviour_mut().gossipsub;
        let Some(block) = gossip::decode_block(data) else {
            gs.report_message_validation_result(&message_id, &source, gossipsub::MessageAcceptance::Reject);
            self.metrics.gossip("undecodable");
            self.charge(source, PeerAction::ProtocolViolation, "undecodable_gossip", None);
            return;
        };
        let event = NetworkEvent::GossipBlock {
            peer: source,
            message_id: message_id.clone(),
            block,
        };
        if self.events.try_send(event).is_err() {
            // The node is behind: let the block go unforwarded rather than queue it.
            gs.report_message_validation_result(&message_id, &source, gossipsub::MessageAcceptance::Ignore);
            self.metrics.gossip("dropped");
        } else {
            self.metrics.gossip("received");
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Range { peer, request, reply } => {
                let wire = pb::BlocksByRangeRequest::from(&request);
                self.send_blocks_request(Protocol::BlocksByRange, peer, reply, |b| {
                    b.range.send_request(&peer, WireRequest::Valid(wire))
                });
            }
            Command::Root { peer, request, reply } => {
                let wire = pb::BlocksByRootRequest::from(&request);
                self.send_blocks_request(Protocol::BlocksByRoot, peer, reply, |b| {
                    b.root.send_request(&peer, WireRequest::Valid(wire))
                });
            }
            Command::Publish { block, reply } => {
                let _ = reply.send(self.publish(&block));
            }
            Command::Report { peer, action, reason } => {
                tracing::debug!(%peer, ?action, reason, "peer reported");
                self.charge(peer, action, reason, None);
            }
            Command::RequestStatus { peer } => {
                if self.manager.connected().any(|p| *p == peer) {
                    self.send_status(peer);
                }
            }
            Command::ReportGossip {
                message_id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &source, acceptance.into());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.manager.summaries());
            }
            Command::KnownPeers { reply } => {
                let _ = reply.send(self.known_peers());
            }
            Command::GossipScore { peer, reply } => {
                let _ = reply.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Dial { addr, reply } => {
                let banned =
                    matches!(addr.iter().last(), Some(AddrProtocol::P2p(p)) if self.manager.is_banned(&p));
                let result = if banned {
                    Err(NetworkError::Dial("peer is banned".into()))
                } else {
                    self.swarm
                        .dial(addr)
                        .map_err(|e| NetworkError::Dial(e.to_string()))
                };
                let _ = reply.send(result);
            }
            Command::Shutdown => {}
        }
    }

    fn publish(&mut self, block: &syncnode_types::Block) -> Result<(), PublishError> {
        let data = gossip::encode_block(block);
        if data.len() > MAX_GOSSIP_MESSAGE {
            return Err(PublishError::TooLarge);
        }
        let topic = self.topic.clone();
        match self.swarm.behaviour_mut().gossipsub.publish(topic, data) {
            Ok(_) => Ok(()),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(PublishError::NoPeers),
            Err(gossipsub::PublishError::Duplicate) => Err(PublishError::Duplicate),
            Err(gossipsub::PublishError::MessageTooLarge) => Err(PublishError::TooLarge),
            Err(e) => Err(PublishError::Other(e.to_string())),
        }
    }

    /// Charges a peer and carries out the verdict, now or (for a peer we still owe an answer)
    /// once that answer has gone out.
    pub(crate) fn charge(
        &mut self,
        peer: PeerId,
        action: PeerAction,
        reason: &'static str,
        after: Option<(Protocol, InboundRequestId)>,
    ) {
        if matches!(action, PeerAction::ProtocolViolation | PeerAction::InvalidRequest) {
            self.metrics.violation(reason);
        }
        let verdict = self.manager.charge(&peer, action);
        if verdict != Verdict::Keep {
            tracing::info!(%peer, ?action, reason, ?verdict, "peer penalised");
        }
        match after {
            Some(key) if verdict != Verdict::Keep => {
                self.after_response.insert(key, (peer, verdict));
            }
            _ => self.enforce(peer, verdict),
        }
    }

    pub(crate) fn enforce(&mut self, peer: PeerId, verdict: Verdict) {
        match verdict {
            Verdict::Keep => {}
            Verdict::Disconnect => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Verdict::Ban { .. } => {
                // Closes every connection and refuses new ones until the ban is lifted.
                if self.swarm.behaviour_mut().blocked.block_peer(peer) {
                    self.metrics.ban();
                } else {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }
}
