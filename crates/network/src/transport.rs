//! The node's transports: TCP (nodelay) + Noise + Yamux behind the [`Door`] that bounds inbound
//! handshakes, through the lab's emulated link when one is configured ([`crate::link`]), and
//! QUIC-v1 — left out under link emulation, since the shaper sees only TCP streams and every
//! connection of a lab node must go through it.

use std::sync::Arc;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, dummy::DummyTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{PeerId, Transport, noise, quic, tcp, yamux};

use crate::config::NetworkConfig;
use crate::door::{Door, DoorBook};
use crate::error::NetworkError;
use crate::link::Uplink;

/// An authenticated, multiplexed transport.
pub type NodeTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// TCP (nodelay) + Noise + Yamux. Every raw stream passes the [`Door`] that bounds inbound
/// handshakes (an inbound upgrade must complete within `config.handshake.timeout`), and, under
/// link emulation, the configured link beneath it.
pub fn tcp_transport(key: &Keypair, config: &NetworkConfig) -> Result<NodeTransport, NetworkError> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let book = DoorBook::new(config.handshake);
    match config.link {
        None => upgraded(Door::new(tcp, book.clone()), book, key, config),
        Some(link) => {
            let uplink: Arc<Uplink> =
                Uplink::new(link).map_err(|e| NetworkError::Transport(format!("link emulation: {e}")))?;
            let shaped = tcp.map(move |stream, _| uplink.shape(stream.0));
            upgraded(Door::new(shaped, book.clone()), book, key, config)
        }
    }
}

/// `raw` upgraded with Noise and Yamux, each completed handshake reported to the door's `book`.
fn upgraded<T>(
    raw: Door<T>,
    book: DoorBook,
    key: &Keypair,
    config: &NetworkConfig,
) -> Result<NodeTransport, NetworkError>
where
    T: Transport + Unpin + Send + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Unpin + Send + 'static,
{
    let noise = noise::Config::new(key).map_err(|e| NetworkError::Transport(e.to_string()))?;
    Ok(raw
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .inbound_timeout(config.handshake.timeout)
        .map(move |(peer, muxer), endpoint| {
            book.handshake_completed(&endpoint);
            (peer, StreamMuxerBox::new(muxer))
        })
        .boxed())
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
