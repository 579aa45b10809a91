//! The libp2p side: the composed behaviour and the swarm (the transports of [`crate::transport`]).
//!
//! Connection policy is layered: the [`Door`](crate::door::Door) bounds inbound TCP handshakes
//! under the transport, `allow_block_list` refuses and closes banned peers,
//! `connection_limits` caps connections per peer, [`IpLimit`](crate::ip_limit::IpLimit) caps
//! inbound connections and identities per remote IP, and [`PeerLimit`] caps distinct peers: a
//! new peer we dial at the outbound target, a new peer that dials us at `max_peers` plus the
//! excess slots of [`crate::admission`] (more connections to a peer already connected are allowed
//! up to the per-peer cap).

use std::collections::HashSet;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm, dummy,
};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, gossipsub, identify, kad,
    mdns, ping, request_response,
};
use prometheus_client::registry::Registry;
use syncnode_proto::{
    BLOCKS_BY_RANGE_PROTOCOL, BLOCKS_BY_ROOT_PROTOCOL, IDENTIFY_PROTOCOL_VERSION, KAD_PROTOCOL,
    STATUS_PROTOCOL,
};

use crate::codec::{RangeCodec, RootCodec, StatusCodec};
use crate::config::NetworkConfig;
use crate::error::NetworkError;
use crate::gossip;
use crate::ip_limit::{IpLimit, IpLimits, ip_of};

/// The configured per-IP limits, with the bootnodes' IPs trusted as well.
fn ip_limits(config: &NetworkConfig) -> IpLimits {
    let mut limits = config.ip_limits.clone();
    limits.trusted.extend(config.bootnodes.iter().filter_map(ip_of));
    limits
}

/// Everything the swarm runs.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub peer_limit: PeerLimit,
    pub ip_limit: IpLimit,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub gossipsub: gossipsub::Behaviour,
    pub status: request_response::Behaviour<StatusCodec>,
    pub range: request_response::Behaviour<RangeCodec>,
    pub root: request_response::Behaviour<RootCodec>,
}

/// Caps the number of distinct connected peers, by the direction of a new peer's connection.
pub struct PeerLimit {
    /// Peers kept; a peer in [`Self::cooldowns`] is let in only below it.
    max_peers: usize,
    /// Most peers connected when a new peer dials us.
    max_inbound_total: usize,
    /// Peers pruned recently, refused the excess slots.
    pub cooldowns: crate::admission::Cooldowns,
    /// Most peers connected when we dial a new peer.
    max_outbound_total: usize,
    connected: HashSet<PeerId>,
}

/// Why [`PeerLimit`] refused a connection.
#[derive(Debug, thiserror::Error)]
#[error("peer limit of {0} reached")]
pub struct PeerLimitReached(pub usize);

impl PeerLimit {
    /// Dials stop at the outbound target of `max_peers`; peers that dial us are let in up to
    /// `max_peers + excess_inbound`.
    pub fn new(max_peers: usize, excess_inbound: usize) -> Self {
        PeerLimit {
            max_peers,
            max_inbound_total: max_peers.saturating_add(excess_inbound),
            cooldowns: crate::admission::Cooldowns::default(),
            max_outbound_total: crate::admission::outbound_target(max_peers),
            connected: HashSet::new(),
        }
    }

    fn check(&self, peer: &PeerId, limit: usize) -> Result<(), ConnectionDenied> {
        if self.connected.contains(peer) || self.connected.len() < limit {
            Ok(())
        } else {
            Err(ConnectionDenied::new(PeerLimitReached(limit)))
        }
    }
}

impl NetworkBehaviour for PeerLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let cooling = self.cooldowns.contains(&peer, std::time::Instant::now());
        self.check(
            &peer,
            if cooling {
                self.max_peers
            } else {
                self.max_inbound_total
            },
        )?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(&peer, self.max_outbound_total)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connected.insert(e.peer_id);
            }
            FromSwarm::ConnectionClosed(e) if e.remaining_established == 0 => {
                self.connected.remove(&e.peer_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, e: THandlerOutEvent<Self>) {
        match e {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Connections per peer, pending inbound and established in all, from the configuration.
fn connection_limits(config: &NetworkConfig) -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        // The door bounds handshakes by closing the least progressed; this is only a backstop
        // for the moment between its closing one and the swarm reaping it.
        .with_max_pending_incoming(Some(backstop(config.handshake.max_pending)))
        .with_max_established(Some(
            config
                .max_peers
                .saturating_add(config.excess_inbound)
                .saturating_mul(config.max_connections_per_peer),
        ))
}

/// Twice the door's bound, as a `u32`.
fn backstop(max_pending: usize) -> u32 {
    u32::try_from(max_pending.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// Gossipsub with the node's peer score, subscribed to the chain's block topic.
fn gossipsub_behaviour(
    key: &Keypair,
    config: &NetworkConfig,
    registry: &mut Registry,
) -> Result<gossipsub::Behaviour, NetworkError> {
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip::config(config.gossip_heartbeat)?,
    )
    .map_err(|e| NetworkError::Behaviour(format!("gossipsub: {e}")))?
    .with_metrics(
        registry.sub_registry_with_prefix("gossipsub"),
        gossipsub::MetricsConfig::default(),
    );
    let topic = gossipsub::IdentTopic::new(syncnode_proto::gossip_topic(&config.genesis_hash));
    gossipsub
        .with_peer_score(
            gossip::score_params(topic.hash(), config.gossip_slot),
            gossip::score_thresholds(),
        )
        .map_err(|e| NetworkError::Behaviour(format!("gossipsub peer score: {e}")))?;
    gossipsub
        .subscribe(&topic)
        .map_err(|e| NetworkError::Behaviour(format!("gossipsub subscribe: {e}")))?;
    Ok(gossipsub)
}

fn behaviour(
    key: &Keypair,
    config: &NetworkConfig,
    registry: &mut Registry,
) -> Result<Behaviour, NetworkError> {
    let peer_id = key.public().to_peer_id();
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL_VERSION.to_owned(), key.public())
            .with_agent_version(config.agent_version.clone()),
    );
    let kad = config.kademlia.then(|| {
        let mut cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
        cfg.set_periodic_bootstrap_interval(Some(config.discovery_interval));
        let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), cfg);
        // Every syncnode serves the DHT: peers are found through each other.
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                .map_err(|e| NetworkError::Behaviour(format!("mdns: {e}")))?,
        )
    } else {
        None
    };
    let gossipsub = gossipsub_behaviour(key, config, registry)?;

    // The codec enforces the protocol deadline on each read; libp2p's own stream timeout is a
    // looser guard over the whole exchange (read, serve, write).
    let rr = request_response::Config::default()
        .with_request_timeout(config.request_timeout.saturating_mul(2))
        .with_max_concurrent_streams(64);
    let deadline = config.request_timeout;
    let protocol =
        |name: &'static str| [(StreamProtocol::new(name), request_response::ProtocolSupport::Full)];
    Ok(Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits: connection_limits::Behaviour::new(connection_limits(config)),
        peer_limit: PeerLimit::new(config.max_peers as usize, config.excess_inbound as usize),
        ip_limit: IpLimit::new(ip_limits(config)),
        identify,
        ping: ping::Behaviour::new(ping::Config::new()),
        kad: kad.into(),
        mdns: mdns.into(),
        gossipsub,
        status: request_response::Behaviour::with_codec(
            StatusCodec::new(deadline),
            protocol(STATUS_PROTOCOL),
            rr.clone(),
        ),
        range: request_response::Behaviour::with_codec(
            RangeCodec::new(deadline),
            protocol(BLOCKS_BY_RANGE_PROTOCOL),
            rr.clone(),
        ),
        root: request_response::Behaviour::with_codec(
            RootCodec::new(deadline),
            protocol(BLOCKS_BY_ROOT_PROTOCOL),
            rr,
        ),
    })
}

/// Builds the swarm: the transports of [`crate::transport`], DNS; the behaviour; metrics.
pub fn build_swarm(
    config: &NetworkConfig,
    registry: &mut Registry,
) -> Result<Swarm<Behaviour>, NetworkError> {
    let tcp = crate::transport::tcp_transport(&config.keypair, config)?;
    let quic = crate::transport::quic_transport(&config.keypair, config);
    let mut built = None;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| tcp)
        .map_err(|e| NetworkError::Transport(e.to_string()))?
        .with_other_transport(|_| quic)
        .map_err(|e| NetworkError::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| NetworkError::Transport(e.to_string()))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            let b = behaviour(key, config, registry);
            match b {
                Ok(b) => Ok(b),
                Err(e) => {
                    let msg = e.to_string();
                    built = Some(e);
                    Err(msg.into())
                }
            }
        })
        .map_err(|e| built.take().unwrap_or(NetworkError::Behaviour(e.to_string())))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_connection_timeout))
        .build();
    Ok(swarm)
}
