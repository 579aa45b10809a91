//! `GET /blocks/stream`: canonical blocks as Server-Sent Events, within bounds that hold however
//! many clients come and however slowly they read.
//!
//! - At most [`MAX_BLOCK_STREAMS`] streams are open at once; one more is answered
//!   `503 Service Unavailable` at once, so a crowd of streams cannot take the node's memory or
//!   its blocking threads from `/status` and the rest of the API.
//! - Each stream holds at most one read-ahead step of its subscription (256 blocks or 1 MiB,
//!   whichever comes first) and [`STREAM_BUFFER`] encoded events: a slow reader makes its stream
//!   wait, never grow.
//! - Blocks are encoded (JSON, hex payload) on blocking threads, at most [`MAX_ENCODING`] at
//!   once for all streams together: however many streams are busy, the runtime's workers stay
//!   free for `/status` and the rest of the API.
//! - A reader that takes nothing for [`STALLED_READER`] loses its stream (and its slot).
//! - A start below the earliest height a pruned node keeps is answered `410 Gone` with a JSON
//!   body naming that height; a stream that pruning overtakes ends with an `end` event saying so.
//! - `/metrics` shows the streams open (`syncnode_http_block_streams`) and those refused
//!   (`syncnode_http_block_streams_refused_total`).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::api::BlockJson;
use crate::http::ApiState;
use crate::subscribe::{SubscribeError, Subscription, SubscriptionEvent};

/// Most block streams open at once.
pub const MAX_BLOCK_STREAMS: usize = 32;
/// Encoded events buffered per stream (besides the one being written).
pub const STREAM_BUFFER: usize = 4;
/// Most blocks being encoded at once, all streams together.
pub const MAX_ENCODING: usize = 2;
/// How long a stream waits for its reader to take an event before it ends.
pub const STALLED_READER: Duration = Duration::from_secs(30);

/// The slots of open streams and their metrics.
#[derive(Clone)]
pub struct BlockStreams {
    slots: Arc<Semaphore>,
    encoders: Arc<Semaphore>,
    open: Gauge,
    refused: Counter,
}

impl BlockStreams {
    /// `max` slots; the metrics are registered under the `syncnode` prefix.
    pub fn register(registry: &mut Registry, max: usize) -> Self {
        let streams = BlockStreams {
            slots: Arc::new(Semaphore::new(max)),
            encoders: Arc::new(Semaphore::new(MAX_ENCODING)),
            open: Gauge::default(),
            refused: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("syncnode");
        r.register(
            "http_block_streams",
            "Block streams (/blocks/stream) open",
            streams.open.clone(),
        );
        r.register(
            "http_block_streams_refused",
            "Block streams refused because every slot was taken",
            streams.refused.clone(),
        );
        streams
    }

    /// A slot, or `None` when every slot is taken.
    fn open(&self) -> Option<Slot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                self.open.inc();
                Some(Slot {
                    _permit: permit,
                    open: self.open.clone(),
                })
            }
            Err(_) => {
                self.refused.inc();
                None
            }
        }
    }
}

/// One open stream's slot, given back when the stream's task ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Query of `/blocks/stream`.
#[derive(Debug, serde::Deserialize)]
pub struct StreamQuery {
    /// First height to send [default: the block after the current head].
    pub from: Option<u64>,
}

/// `GET /blocks/stream?from=H`: Server-Sent Events, one `block` event (JSON, `id` = height) per
/// canonical block in consecutive height order, the backlog first, then live; a `reorg` event
/// `{"rewind_to": H}` when blocks already sent stop being canonical; `end` when it ends.
pub async fn block_stream(State(s): State<ApiState>, Query(q): Query<StreamQuery>) -> Response {
    if let Some(from) = q.from
        && let Err(SubscribeError::BelowEarliest { from, earliest }) = s.subscriptions.check_start(from)
    {
        let body = serde_json::json!({
            "error": format!(
                "this node keeps no blocks below height {earliest} (pruned history); \
                 {from} is below it: start at {earliest} or above"
            ),
            "earliest_height": earliest,
        });
        return (StatusCode::GONE, Json(body)).into_response();
    }
    let Some(slot) = s.streams.open() else {
        let why = format!("too many block streams open (at most {MAX_BLOCK_STREAMS}); try again later");
        return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    };
    let (tx, rx) = mpsc::channel::<Event>(STREAM_BUFFER);
    let sub = s.subscriptions.from(q.from);
    tokio::spawn(feed(sub, tx, slot, s.streams.encoders.clone()));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Moves the subscription's events into `tx` until the client goes, stalls, or the
/// subscription ends; the slot is held until then.
async fn feed(mut sub: Subscription, tx: mpsc::Sender<Event>, slot: Slot, encoders: Arc<Semaphore>) {
    let _slot = slot;
    loop {
        let event = match sub.next().await {
            Ok(event) => match encode(&encoders, event).await {
                Some(event) => event,
                None => return,
            },
            Err(e) => {
                // The node is stopping, pruning overtook the stream, or the store failed.
                let end = Event::default().event("end").data(e.to_string());
                let _ = tokio::time::timeout(STALLED_READER, tx.send(end)).await;
                return;
            }
        };
        match tokio::time::timeout(STALLED_READER, tx.send(event)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return, // the client went away
            Err(_) => {
                tracing::debug!("block stream reader stalled; closing its stream");
                return;
            }
        }
    }
}

/// The SSE event of a subscription event, encoded on a blocking thread under `encoders`;
/// `None` if it cannot be (the node is stopping).
async fn encode(encoders: &Arc<Semaphore>, event: SubscriptionEvent) -> Option<Event> {
    let permit = encoders.clone().acquire_owned().await.ok()?;
    let encoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        match event {
            SubscriptionEvent::Block(b) => Event::default()
                .event("block")
                .id(b.height().to_string())
                .json_data(BlockJson::from(&b)),
            SubscriptionEvent::Reorg { rewind_to } => Event::default()
                .event("reorg")
                .json_data(serde_json::json!({ "rewind_to": rewind_to })),
        }
    })
    .await;
    match encoded {
        Ok(Ok(event)) => Some(event),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot encode a block event");
            None
        }
        Err(_) => None,
    }
}
