//! Per-IP limits on inbound connections: one host cannot take every connection slot nor mint
//! identities without end.
//!
//! [`IpLimit`] counts, per remote IP, the inbound connections established and the distinct peer
//! ids they carry. A new inbound connection is denied once its IP holds `max_connections_per_ip`
//! connections, or when it brings a new identity to an IP that already shows `max_peers_per_ip`
//! of them (as the peer managers of Prysm and Lighthouse limit peers per IP). Loopback (unless
//! `exempt_loopback` is off) and the configured trusted IPs are exempt, so local testnets and
//! known operators keep working. Outbound connections are ours and never limited here.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// The limits and who is exempt from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpLimits {
    /// Most inbound connections from one IP (default 8).
    pub max_connections_per_ip: usize,
    /// Most distinct peer ids connected inbound from one IP (default 4).
    pub max_peers_per_ip: usize,
    /// Whether loopback addresses are exempt (default true).
    pub exempt_loopback: bool,
    /// IPs never limited (e.g. a known operator's hosts).
    pub trusted: Vec<IpAddr>,
}

impl Default for IpLimits {
    fn default() -> Self {
        IpLimits {
            max_connections_per_ip: 8,
            max_peers_per_ip: 4,
            exempt_loopback: true,
            trusted: Vec::new(),
        }
    }
}

/// Why [`IpLimit`] refused a connection.
#[derive(Debug, thiserror::Error)]
pub enum IpLimitReached {
    #[error("{0} already holds the most inbound connections allowed per IP")]
    Connections(IpAddr),
    #[error("{0} already shows the most peer identities allowed per IP")]
    Identities(IpAddr),
}

#[derive(Debug, Default)]
struct PerIp {
    connections: usize,
    peers: HashMap<PeerId, usize>,
}

/// The behaviour that enforces [`IpLimits`] on inbound connections.
pub struct IpLimit {
    limits: IpLimits,
    by_ip: HashMap<IpAddr, PerIp>,
    connections: HashMap<ConnectionId, (IpAddr, PeerId)>,
    trusted: HashSet<IpAddr>,
}

/// The IP of a TCP or QUIC multiaddr.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl IpLimit {
    /// A limit with nothing counted yet.
    pub fn new(limits: IpLimits) -> Self {
        let trusted = limits.trusted.iter().copied().collect();
        IpLimit {
            limits,
            by_ip: HashMap::new(),
            connections: HashMap::new(),
            trusted,
        }
    }

    fn exempt(&self, ip: &IpAddr) -> bool {
        (self.limits.exempt_loopback && ip.is_loopback()) || self.trusted.contains(ip)
    }

    /// Whether one more inbound connection of `peer` from `ip` is allowed.
    pub fn check(&self, ip: IpAddr, peer: &PeerId) -> Result<(), IpLimitReached> {
        if self.exempt(&ip) {
            return Ok(());
        }
        let Some(seen) = self.by_ip.get(&ip) else {
            return Ok(());
        };
        if seen.connections >= self.limits.max_connections_per_ip {
            return Err(IpLimitReached::Connections(ip));
        }
        if !seen.peers.contains_key(peer) && seen.peers.len() >= self.limits.max_peers_per_ip {
            return Err(IpLimitReached::Identities(ip));
        }
        Ok(())
    }

    fn opened(&mut self, id: ConnectionId, ip: IpAddr, peer: PeerId) {
        let seen = self.by_ip.entry(ip).or_default();
        seen.connections += 1;
        *seen.peers.entry(peer).or_insert(0) += 1;
        self.connections.insert(id, (ip, peer));
    }

    fn closed(&mut self, id: ConnectionId) {
        let Some((ip, peer)) = self.connections.remove(&id) else {
            return;
        };
        if let Some(seen) = self.by_ip.get_mut(&ip) {
            seen.connections = seen.connections.saturating_sub(1);
            if let Some(n) = seen.peers.get_mut(&peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    seen.peers.remove(&peer);
                }
            }
            if seen.connections == 0 {
                self.by_ip.remove(&ip);
            }
        }
    }
}

impl NetworkBehaviour for IpLimit {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if let Some(ip) = ip_of(remote) {
            self.check(ip, &peer).map_err(ConnectionDenied::new)?;
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) if e.endpoint.is_listener() => {
                if let Some(ip) = ip_of(e.endpoint.get_remote_address()) {
                    self.opened(e.connection_id, ip, e.peer_id);
                }
            }
            FromSwarm::ConnectionClosed(e) => self.closed(e.connection_id),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn connections_and_identities_are_counted_per_ip_and_given_back() {
        let limits = IpLimits {
            max_connections_per_ip: 3,
            max_peers_per_ip: 2,
            exempt_loopback: true,
            trusted: vec![ip("10.0.0.9")],
        };
        let mut book = IpLimit::new(limits);
        let host = ip("10.0.0.1");
        let (p, q) = (PeerId::random(), PeerId::random());
        book.opened(ConnectionId::new_unchecked(1), host, p);
        book.opened(ConnectionId::new_unchecked(2), host, q);
        // A third identity from the host is refused; a known one may add a connection.
        let stranger = PeerId::random();
        assert!(matches!(
            book.check(host, &stranger),
            Err(IpLimitReached::Identities(_))
        ));
        assert!(book.check(host, &p).is_ok());
        book.opened(ConnectionId::new_unchecked(3), host, p);
        assert!(matches!(
            book.check(host, &p),
            Err(IpLimitReached::Connections(_))
        ));
        // Closing gives back the connection, and the identity once its last connection goes.
        book.closed(ConnectionId::new_unchecked(2));
        assert!(book.check(host, &stranger).is_ok());
        // Another host, a trusted host and loopback are counted apart or not at all.
        assert!(book.check(ip("10.0.0.2"), &stranger).is_ok());
        book.opened(ConnectionId::new_unchecked(4), ip("10.0.0.9"), p);
        book.opened(ConnectionId::new_unchecked(5), ip("10.0.0.9"), q);
        assert!(book.check(ip("10.0.0.9"), &stranger).is_ok());
        assert!(book.check(ip("127.0.0.1"), &stranger).is_ok());
        book.closed(ConnectionId::new_unchecked(1));
        book.closed(ConnectionId::new_unchecked(3));
        assert!(
            !book.by_ip.contains_key(&host),
            "an IP with no connection is forgotten"
        );
    }
}
