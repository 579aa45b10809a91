//! The request/response codec: one varint-framed protobuf message each way (PROTOCOL.md §3).
//!
//! Reading uses `syncnode_proto::frame`, which checks the announced length against the frame
//! limit before sizing any buffer. A frame that is too large, does not decode, or ends early is
//! returned as an `io::Error` wrapping [`WireViolation`], so the event loop can tell a peer's
//! protocol violation (charged) from an ordinary I/O failure (not charged). On the serving
//! side such a violation (and a stall) is delivered as [`WireRequest::Violation`] instead.

use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;
use syncnode_proto::frame::{FrameError, read_frame_bytes, write_frame};
use syncnode_proto::{MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME};

/// A frame that broke the wire protocol. Carried inside an `io::Error` of kind `InvalidData`.
#[derive(Debug, thiserror::Error)]
#[error("wire violation: {0}")]
pub struct WireViolation(pub String);

/// Whether an I/O error from the codec is the remote's protocol violation.
pub fn is_violation(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<WireViolation>().is_some())
}

fn frame_to_io(err: FrameError) -> io::Error {
    match err {
        FrameError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, WireViolation(other.to_string())),
    }
}

/// Reads and decodes one frame. A stream that ends before its first byte is a plain
/// `UnexpectedEof` (the remote declined to answer, not a violation); anything else wrong with the
/// frame is a [`WireViolation`].
async fn read_message<M, T>(io: &mut T, max: usize) -> io::Result<M>
where
    M: prost::Message + Default,
    T: AsyncRead + Unpin + Send,
{
    match read_frame_bytes(io, max).await.map_err(frame_to_io)? {
        Some(bytes) => M::decode(bytes).map_err(|e| frame_to_io(FrameError::Decode(e))),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "stream closed before a frame",
        )),
    }
}

/// An inbound request as read from a stream: a message, or the violation that stood in for it.
///
/// libp2p's request/response behaviour drops a stream whose request fails to read without
/// telling anyone who sent it, so the codec turns a bad or stalled request frame into a
/// [`WireRequest::Violation`]: it reaches the event loop with the peer's id, which charges the
/// peer and closes the stream unanswered.
#[derive(Debug, Clone, PartialEq)]
pub enum WireRequest<R> {
    Valid(R),
    Violation(String),
}

/// A codec for one protocol: request `Req`, response `Resp`, both prost messages. `deadline`
/// bounds reading a request (a requester that has not finished its frame by then stalled) and
/// reading a response (the responder's deadline).
pub struct ProtoCodec<Req, Resp> {
    deadline: Duration,
    _marker: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> ProtoCodec<Req, Resp> {
    /// A codec whose reads give up after `deadline`.
    pub fn new(deadline: Duration) -> Self {
        ProtoCodec {
            deadline,
            _marker: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for ProtoCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.deadline)
    }
}

impl<Req, Resp> request_response::Codec for ProtoCodec<Req, Resp>
where
    Req: prost::Message + Default + Send + 'static,
    Resp: prost::Message + Default + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = WireRequest<Req>;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<WireRequest<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        match tokio::time::timeout(self.deadline, read_message(io, MAX_REQUEST_FRAME)).await {
            Ok(Ok(req)) => Ok(WireRequest::Valid(req)),
            Ok(Err(e)) if is_violation(&e) => Ok(WireRequest::Violation(e.to_string())),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(WireRequest::Violation(
                "request frame not finished within the deadline".into(),
            )),
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        match tokio::time::timeout(self.deadline, read_message(io, MAX_RESPONSE_FRAME)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no response within the deadline",
            )),
        }
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: WireRequest<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let WireRequest::Valid(req) = req else {
            return Err(io::Error::other("refusing to send a violation"));
        };
        // Our own oversize request is a local bug, not the peer's fault: plain `Other` error.
        write_frame(io, &req, MAX_REQUEST_FRAME)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        io.flush().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, resp: Resp) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &resp, MAX_RESPONSE_FRAME)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        io.flush().await
    }
}

/// Codec of `/syncnode/status/1`.
pub type StatusCodec = ProtoCodec<syncnode_proto::pb::Status, syncnode_proto::pb::Status>;
/// Codec of `/syncnode/blocks_by_range/1`.
pub type RangeCodec =
    ProtoCodec<syncnode_proto::pb::BlocksByRangeRequest, syncnode_proto::pb::BlocksResponse>;
/// Codec of `/syncnode/blocks_by_root/1`.
pub type RootCodec = ProtoCodec<syncnode_proto::pb::BlocksByRootRequest, syncnode_proto::pb::BlocksResponse>;
