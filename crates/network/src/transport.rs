//! The node's transports: TCP (nodelay) + Noise + Yamux, through the lab's emulated link when
//! one is configured ([`crate::link`]), and QUIC-v1 — left out under link emulation, since the
//! shaper sees only TCP streams and every connection of a lab node must go through it.

use std::sync::Arc;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, dummy::DummyTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, Transport, noise, quic, tcp, yamux};

use crate::config::NetworkConfig;
use crate::error::NetworkError;
use crate::link::Uplink;

/// An authenticated, multiplexed transport.
pub type NodeTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// TCP + Noise + Yamux, every stream shaped by the configured link if there is one.
pub fn tcp_transport(key: &Keypair, config: &NetworkConfig) -> Result<NodeTransport, NetworkError> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let noise = noise::Config::new(key).map_err(|e| NetworkError::Transport(e.to_string()))?;
    let yamux = yamux::Config::default();
    let transport = match config.link {
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        Some(link) => {
            let uplink: Arc<Uplink> =
                Uplink::new(link).map_err(|e| NetworkError::Transport(format!("link emulation: {e}")))?;
            tcp.map(move |stream, _| uplink.shape(stream.0))
                .upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(yamux)
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                .boxed()
        }
    };
    Ok(transport)
}

/// QUIC-v1, or no transport at all under link emulation (a QUIC address is then refused).
pub fn quic_transport(key: &Keypair, config: &NetworkConfig) -> NodeTransport {
    if config.link.is_some() {
        return DummyTransport::<(PeerId, StreamMuxerBox)>::new().boxed();
    }
    quic::tokio::Transport::new(quic::Config::new(key))
        .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection)))
        .boxed()
}
