//! The request/response side of the network task: Status exchange, block requests we make,
//! and block requests we serve (the policy before a request reaches [`crate::serve::serve`]).

use std::io;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::{
    Event, InboundFailure, InboundRequestId, Message, OutboundFailure, OutboundRequestId, ResponseChannel,
};
use syncnode_proto::convert::ResponseCode;
use syncnode_proto::peer_score::{PeerAction, Verdict};
use syncnode_proto::{BlocksByRangeRequest, BlocksByRootRequest, BlocksResponse, ConvertError, Status, pb};
use tokio::sync::oneshot;

use crate::behaviour::Behaviour;
use crate::codec::{WireRequest, is_violation};
use crate::error::RequestError;
use crate::handle::NetworkEvent;
use crate::metrics::Direction;
use crate::rate_limit::Protocol;
use crate::serve::{BlockQuery, serve};
use crate::service::{Pending, ServeDone, Service};

/// How long a peer answered before a disconnect keeps its connection, so that it can read the
/// answer (which says why). Carried out by the once-a-second maintenance: 1–2 s in all.
const DISCONNECT_GRACE: Duration = Duration::from_secs(1);
/// Most peers waiting out their grace at once; beyond it they are disconnected at once.
const MAX_CLOSING: usize = 1024;

/// Metric label of a response code.
pub fn code_label(code: ResponseCode) -> &'static str {
    match code {
        ResponseCode::Ok => "ok",
        ResponseCode::InvalidRequest => "invalid_request",
        ResponseCode::ServerError => "server_error",
        ResponseCode::ResourceUnavailable => "resource_unavailable",
        ResponseCode::RateLimited => "rate_limited",
    }
}

fn is_stream_reset(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Keeps a peer's error message short in our logs and replies.
fn short(message: String) -> String {
    let mut message = message;
    if message.len() > 256 {
        let mut end = 256;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

impl Service {
    /// Asks a peer for its Status (on connect and every status interval).
    pub(crate) fn send_status(&mut self, peer: PeerId) {
        if !self.status_in_flight.insert(peer) {
            return;
        }
        let ours = pb::Status::from(&*self.local_status.borrow());
        let id = self
            .swarm
            .behaviour_mut()
            .status
            .send_request(&peer, WireRequest::Valid(ours));
        self.pending_status.insert(id, (peer, Instant::now()));
        self.metrics.request(Direction::Outbound, Protocol::Status);
    }

    pub(crate) fn refresh_status(&mut self) {
        let peers: Vec<PeerId> = self.manager.connected().copied().collect();
        for peer in peers {
            self.send_status(peer);
        }
    }

    /// A peer's Status arrived (as its request or its answer).
    fn on_peer_status(
        &mut self,
        peer: PeerId,
        status: Status,
        inbound: Option<(Protocol, InboundRequestId)>,
    ) {
        if status.genesis_hash != self.genesis {
            tracing::info!(%peer, theirs = %status.genesis_hash, "peer is on another chain; banning");
            self.manager.ban(&peer);
            let verdict = syncnode_proto::peer_score::Verdict::Ban { until_ms: 0 };
            match inbound {
                // Answer first, so the peer learns why, then close.
                Some(key) => {
                    self.after_response.insert(key, (peer, verdict));
                }
                None => self.enforce(peer, verdict),
            }
            return;
        }
        self.emit(NetworkEvent::PeerStatus { peer, status });
    }

    /// A peer asked for our Status (and sent its own).
    fn on_status_request(
        &mut self,
        peer: PeerId,
        request_id: InboundRequestId,
        request: WireRequest<pb::Status>,
        channel: ResponseChannel<pb::Status>,
    ) {
        let proto = Protocol::Status;
        self.metrics.request(Direction::Inbound, proto);
        let request = match request {
            WireRequest::Valid(request) => request,
            WireRequest::Violation(why) => {
                // Dropping the channel closes the stream unanswered.
                self.wire_violation(proto, peer, &why);
                return;
            }
        };
        if !self.limiter.allow(peer, proto, 1, Instant::now()) {
            // Status has no error code: a refused request is closed unanswered.
            self.metrics.rate_limited(proto);
            drop(channel);
            return;
        }
        let theirs = match Status::try_from(&request) {
            Ok(status) => status,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "malformed status request");
                self.charge(peer, PeerAction::ProtocolViolation, "bad_status", None);
                return;
            }
        };
        let ours = pb::Status::from(&*self.local_status.borrow());
        if self
            .swarm
            .behaviour_mut()
            .status
            .send_response(channel, ours)
            .is_ok()
        {
            self.metrics.response(Direction::Inbound, proto, "ok");
        }
        self.on_peer_status(peer, theirs, Some((proto, request_id)));
    }

    pub(crate) fn on_status_event(&mut self, event: Event<WireRequest<pb::Status>, pb::Status>) {
        let proto = Protocol::Status;
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => self.on_status_request(peer, request_id, request, channel),
            Event::Message {
                peer,
                message: Message::Response { request_id, response },
                ..
            } => {
                if let Some((_, started)) = self.pending_status.remove(&request_id) {
                    self.metrics.latency(proto, started.elapsed().as_secs_f64());
                }
                self.status_in_flight.remove(&peer);
                match Status::try_from(&response) {
                    Ok(status) => {
                        self.metrics.response(Direction::Outbound, proto, "ok");
                        self.on_peer_status(peer, status, None);
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "malformed status response");
                        self.metrics.response(Direction::Outbound, proto, "violation");
                        self.charge(peer, PeerAction::ProtocolViolation, "bad_status", None);
                    }
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.pending_status.remove(&request_id);
                self.status_in_flight.remove(&peer);
                let failure = self.outbound_failure(peer, proto, error);
                tracing::debug!(%peer, %failure, "status request failed");
            }
            Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.inbound_failure(proto, peer, request_id, error),
            Event::ResponseSent { request_id, .. } => self.response_sent(proto, request_id),
        }
    }

    pub(crate) fn on_blocks_event(
        &mut self,
        proto: Protocol,
        event: Event<impl BlockRequestWire, pb::BlocksResponse>,
    ) {
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                self.metrics.request(Direction::Inbound, proto);
                match request.into_query() {
                    Err(Rejected::Wire(why)) => self.wire_violation(proto, peer, &why),
                    Err(Rejected::Invalid(e)) => {
                        self.on_block_request(proto, peer, request_id, Err(e), channel)
                    }
                    Ok(query) => self.on_block_request(proto, peer, request_id, Ok(query), channel),
                }
            }
            Event::Message {
                peer,
                message: Message::Response { request_id, response },
                ..
            } => {
                let Some(pending) = self.pending_mut(proto).remove(&request_id) else {
                    return;
                };
                self.metrics
                    .latency(proto, pending.started.elapsed().as_secs_f64());
                tracing::trace!(peer = %pending.peer, protocol = proto.label(), "answer received");
                let result = match BlocksResponse::try_from(response) {
                    Err(e) => {
                        self.metrics.response(Direction::Outbound, proto, "violation");
                        self.charge(peer, PeerAction::ProtocolViolation, "bad_response", None);
                        Err(RequestError::ProtocolViolation(e.to_string()))
                    }
                    Ok(resp) if resp.code != ResponseCode::Ok => {
                        self.metrics
                            .response(Direction::Outbound, proto, code_label(resp.code));
                        Err(RequestError::Refused {
                            code: resp.code,
                            message: short(resp.error_message),
                        })
                    }
                    Ok(resp) => {
                        self.metrics.response(Direction::Outbound, proto, "ok");
                        Ok(resp)
                    }
                };
                let _ = pending.reply.send(result);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let failure = self.outbound_failure(peer, proto, error);
                if let Some(pending) = self.pending_mut(proto).remove(&request_id) {
                    let _ = pending.reply.send(Err(failure));
                }
            }
            Event::InboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.inbound_failure(proto, peer, request_id, error),
            Event::ResponseSent { request_id, .. } => self.response_sent(proto, request_id),
        }
    }

    fn pending_mut(&mut self, proto: Protocol) -> &mut std::collections::HashMap<OutboundRequestId, Pending> {
        match proto {
            Protocol::BlocksByRoot => &mut self.pending_root,
            _ => &mut self.pending_range,
        }
    }

    /// Sends an outbound block request, failing fast if the peer is not connected or banned.
    pub(crate) fn send_blocks_request(
        &mut self,
        proto: Protocol,
        peer: PeerId,
        reply: oneshot::Sender<Result<BlocksResponse, RequestError>>,
        send: impl FnOnce(&mut Behaviour) -> OutboundRequestId,
    ) {
        if self.manager.is_banned(&peer) || !self.swarm.is_connected(&peer) {
            let _ = reply.send(Err(RequestError::Disconnected));
            return;
        }
        self.metrics.request(Direction::Outbound, proto);
        let id = send(self.swarm.behaviour_mut());
        self.pending_mut(proto).insert(
            id,
            Pending {
                peer,
                started: Instant::now(),
                reply,
            },
        );
    }

    /// Classifies an outbound failure; charges the peer only for a wire violation.
    fn outbound_failure(&mut self, peer: PeerId, proto: Protocol, error: OutboundFailure) -> RequestError {
        let (failure, label) = match error {
            OutboundFailure::Timeout => (RequestError::Timeout, "timeout"),
            OutboundFailure::DialFailure | OutboundFailure::ConnectionClosed => {
                (RequestError::Disconnected, "disconnected")
            }
            OutboundFailure::UnsupportedProtocols => (RequestError::UnsupportedProtocol, "unsupported"),
            OutboundFailure::Io(e) if is_violation(&e) => {
                self.charge(peer, PeerAction::ProtocolViolation, "bad_response", None);
                (RequestError::ProtocolViolation(e.to_string()), "violation")
            }
            OutboundFailure::Io(e) if e.kind() == io::ErrorKind::TimedOut => {
                (RequestError::Timeout, "timeout")
            }
            OutboundFailure::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                (RequestError::NoResponse, "no_response")
            }
            OutboundFailure::Io(e) if is_stream_reset(&e) => (RequestError::Disconnected, "disconnected"),
            OutboundFailure::Io(e) => (RequestError::Local(e.to_string()), "local_error"),
        };
        self.metrics.response(Direction::Outbound, proto, label);
        failure
    }

    /// The serving policy up to the serving task: validation, rate limit, queue bound.
    fn on_block_request(
        &mut self,
        proto: Protocol,
        peer: PeerId,
        request_id: InboundRequestId,
        query: Result<BlockQuery, ConvertError>,
        channel: ResponseChannel<pb::BlocksResponse>,
    ) {
        let query = match query {
            Ok(query) => query,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "invalid block request");
                let resp = BlocksResponse::error(ResponseCode::InvalidRequest, e.to_string());
                self.respond(proto, channel, &resp);
                let key = Some((proto, request_id));
                self.charge(peer, PeerAction::InvalidRequest, "invalid_request", key);
                return;
            }
        };
        if !self.limiter.allow(peer, proto, query.cost(), Instant::now()) {
            self.metrics.rate_limited(proto);
            let resp = BlocksResponse::error(ResponseCode::RateLimited, "rate limited");
            self.respond(proto, channel, &resp);
            return;
        }
        // Also refused while this peer holds its share of the serving slots. Room in the byte
        // budget is waited for by the serving task, within its budget.
        if !self.has_serving_slot(&peer) {
            let resp = BlocksResponse::error(ResponseCode::ResourceUnavailable, "busy");
            self.respond(proto, channel, &resp);
            return;
        }
        self.serving += 1;
        *self.serving_by_peer.entry(peer).or_insert(0) += 1;
        let ctx = self.serve_ctx.clone();
        let done = self.serve_tx.clone();
        let received = Instant::now();
        tokio::spawn(async move {
            let (response, held) = serve(ctx, peer, query, received).await;
            let finished = ServeDone {
                protocol: proto,
                request_id,
                peer,
                channel,
                code: code_label(response.code),
                blocks: response.blocks.len(),
                response: pb::BlocksResponse::from(&response),
                held,
            };
            // Capacity equals the most serving tasks at once, so this never waits long; it
            // fails only once the network task has stopped.
            let _ = done.send(finished).await;
        });
    }

    /// Whether a request from `peer` may take a serving slot: one is free, the peer holds fewer
    /// than `max_serving_per_peer` and than its fair share of the slots (one share kept for a
    /// requester yet to come), and the last eighth of the slots is left to peers that hold
    /// none, so flooders that re-ask at once cannot fill every slot between an honest peer's
    /// requests.
    fn has_serving_slot(&self, peer: &PeerId) -> bool {
        let held = self.serving_by_peer.get(peer).copied().unwrap_or(0);
        let requesters = self.serving_by_peer.len() + usize::from(held == 0);
        let share = (self.serve_limit / (requesters + 1)).clamp(1, self.max_serving_per_peer.max(1));
        let kept = if held == 0 {
            0
        } else {
            (self.serve_limit / 8).max(1)
        };
        held < share && self.serving + kept < self.serve_limit
    }

    fn respond(
        &mut self,
        proto: Protocol,
        channel: ResponseChannel<pb::BlocksResponse>,
        resp: &BlocksResponse,
    ) {
        let _ = self.send_blocks_response(
            proto,
            channel,
            pb::BlocksResponse::from(resp),
            code_label(resp.code),
        );
    }

    /// Hands a response to libp2p; returns whether the requester was still there to take it.
    fn send_blocks_response(
        &mut self,
        proto: Protocol,
        channel: ResponseChannel<pb::BlocksResponse>,
        resp: pb::BlocksResponse,
        code: &'static str,
    ) -> bool {
        let behaviour = self.swarm.behaviour_mut();
        let sent = match proto {
            Protocol::BlocksByRoot => behaviour.root.send_response(channel, resp),
            _ => behaviour.range.send_response(channel, resp),
        };
        match sent {
            Ok(()) => {
                self.metrics.response(Direction::Inbound, proto, code);
                true
            }
            Err(_) => {
                tracing::debug!(protocol = proto.label(), "requester gone before the answer");
                false
            }
        }
    }

    /// A serving task finished: its response goes out, and the room its blocks hold in the
    /// byte budget stays held until libp2p has written it.
    pub(crate) fn on_served(&mut self, done: ServeDone) {
        self.serving = self.serving.saturating_sub(1);
        if let std::collections::hash_map::Entry::Occupied(mut held) = self.serving_by_peer.entry(done.peer) {
            let n = held.get_mut();
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove();
            }
        }
        let key = (done.protocol, done.request_id);
        self.metrics.blocks_served(done.blocks);
        tracing::trace!(peer = %done.peer, blocks = done.blocks, code = done.code, "served");
        if self.send_blocks_response(done.protocol, done.channel, done.response, done.code)
            && let Some(held) = done.held
        {
            self.writing.insert(key, held);
        }
    }

    /// A request frame that was oversize, undecodable or stalled: charge the sender.
    fn wire_violation(&mut self, proto: Protocol, peer: PeerId, why: &str) {
        tracing::debug!(%peer, protocol = proto.label(), why, "bad request frame");
        self.metrics.response(Direction::Inbound, proto, "violation");
        self.charge(peer, PeerAction::ProtocolViolation, "bad_request_frame", None);
    }

    fn inbound_failure(
        &mut self,
        proto: Protocol,
        peer: PeerId,
        request_id: InboundRequestId,
        error: InboundFailure,
    ) {
        // Not the peer's fault as far as we can tell: our answer was late, the connection
        // closed, or we declined to answer.
        tracing::debug!(%peer, protocol = proto.label(), error = %error, "inbound request failed");
        self.response_sent(proto, request_id);
    }

    /// The answer to an inbound request went out (or never will): run any deferred verdict.
    fn response_sent(&mut self, proto: Protocol, request_id: InboundRequestId) {
        // Written (or never will be): its room in the byte budget is given back.
        self.writing.remove(&(proto, request_id));
        if let Some((peer, verdict)) = self.after_response.remove(&(proto, request_id)) {
            if verdict == Verdict::Disconnect && self.closing.len() < MAX_CLOSING {
                // The answer says why; give the peer time to read it before the connection goes.
                self.closing.push_back((Instant::now() + DISCONNECT_GRACE, peer));
            } else {
                self.enforce(peer, verdict);
            }
        }
    }
}

/// Why an inbound block request is not served.
pub(crate) enum Rejected {
    /// The frame itself broke the protocol: no answer, the stream is closed.
    Wire(String),
    /// A well-formed message outside the limits: answered `INVALID_REQUEST`.
    Invalid(ConvertError),
}

/// A block request as read from the wire, turned into a validated query.
pub(crate) trait BlockRequestWire {
    fn into_query(self) -> Result<BlockQuery, Rejected>;
}

impl BlockRequestWire for WireRequest<pb::BlocksByRangeRequest> {
    fn into_query(self) -> Result<BlockQuery, Rejected> {
        match self {
            WireRequest::Valid(r) => BlocksByRangeRequest::try_from(&r)
                .map(BlockQuery::Range)
                .map_err(Rejected::Invalid),
            WireRequest::Violation(why) => Err(Rejected::Wire(why)),
        }
    }
}

impl BlockRequestWire for WireRequest<pb::BlocksByRootRequest> {
    fn into_query(self) -> Result<BlockQuery, Rejected> {
        match self {
            WireRequest::Valid(r) => BlocksByRootRequest::try_from(&r)
                .map(BlockQuery::Root)
                .map_err(Rejected::Invalid),
            WireRequest::Violation(why) => Err(Rejected::Wire(why)),
        }
    }
}
