//! Errors of the network and of its requests.

use syncnode_proto::convert::ResponseCode;

/// The network could not start or is gone.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("behaviour setup failed: {0}")]
    Behaviour(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the network task has stopped")]
    Stopped,
    #[error("dial failed: {0}")]
    Dial(String),
}

/// Why an outbound request got no usable answer. The sync engine judges the peer from this:
/// the network itself charges only wire-level violations ([`RequestError::ProtocolViolation`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer within the deadline (not charged by the network; the engine decides).
    #[error("request timed out")]
    Timeout,
    /// Not connected, the dial failed, or the connection closed before the answer.
    #[error("peer disconnected")]
    Disconnected,
    /// The peer closed the stream without answering (e.g. it declined a status request).
    #[error("stream closed without an answer")]
    NoResponse,
    /// The peer does not speak the protocol.
    #[error("peer does not support the protocol")]
    UnsupportedProtocol,
    /// The answer broke the wire protocol: oversize or undecodable frame, a field of the wrong
    /// length, an unknown response code. The network has already charged the peer.
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    /// The peer answered with a non-OK code (e.g. `RATE_LIMITED`).
    #[error("peer answered {code:?}: {message}")]
    Refused { code: ResponseCode, message: String },
    /// A local I/O failure or local resource limit (never the peer's fault).
    #[error("local failure: {0}")]
    Local(String),
    /// The network task has stopped.
    #[error("network stopped")]
    Stopped,
}

/// Why a block could not be published on gossip.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("no peer is subscribed to the blocks topic")]
    NoPeers,
    #[error("this block was already published or seen")]
    Duplicate,
    #[error("block too large for gossip")]
    TooLarge,
    #[error("publish failed: {0}")]
    Other(String),
    #[error("network stopped")]
    Stopped,
}

/// A [`crate::BlockSource`] failed (the store's failure, answered `SERVER_ERROR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block source: {0}")]
pub struct SourceError(pub String);
