//! The HTTP API: `/status`, `/peers`, `/blocks/{height}`, `/blocks/hash/{hash}`, `/metrics`.
//! Store reads run on blocking threads; nothing here touches the swarm task except through the
//! network handle's bounded command channel.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use syncnode_network::{NetworkHandle, PeerId};
use syncnode_store::BlockStore;
use syncnode_sync::{PeerView, SyncState};
use syncnode_types::{Block, Hash};
use tokio::sync::watch;

use crate::api::{BlockJson, DiskJson, PeerJson, StatusJson};
use crate::import::ChainWatch;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<BlockStore>,
    pub network: NetworkHandle,
    pub chain: ChainWatch,
    pub sync: watch::Receiver<SyncView>,
    pub peers: watch::Receiver<PeersView>,
    pub registry: Arc<Registry>,
    pub subscriptions: crate::subscribe::Subscriptions,
    pub streams: crate::stream::BlockStreams,
    pub disk: Arc<crate::disk::DiskSpace>,
}

/// The engine's view, as the event loop last published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncView {
    pub state: SyncState,
    pub target: u64,
    pub backfill_complete: bool,
}

/// The engine's record of each peer with a Status, as the event loop last published it.
pub type PeersView = Arc<std::collections::HashMap<PeerId, PeerView>>;

/// The lowercase name of a sync state, as `/status` shows it.
pub fn state_name(state: SyncState) -> &'static str {
    match state {
        SyncState::Synced => "synced",
        SyncState::Syncing => "syncing",
        SyncState::Backfilling => "backfilling",
        SyncState::Stalled => "stalled",
    }
}

/// The router over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/peers", get(peers))
        .route("/blocks/{height}", get(block_by_height))
        .route("/blocks/hash/{hash}", get(block_by_hash))
        .route("/metrics", get(metrics))
        .route("/blocks/stream", get(crate::stream::block_stream))
        .with_state(state)
}

/// Binds `addr` and serves the API until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::warn!("http server stopped: {e}");
        }
    });
    Ok((local, task))
}

async fn status(State(s): State<ApiState>) -> Json<StatusJson> {
    let chain = *s.chain.status.borrow();
    let view = *s.sync.borrow();
    let peers = s.network.peers().await;
    let listen_addrs = s
        .network
        .listen_addrs()
        .await
        .iter()
        .map(|a| a.to_string())
        .collect();
    Json(StatusJson {
        peer_id: s.network.local_peer_id().to_string(),
        listen_addrs,
        genesis_hash: chain.genesis_hash,
        head_height: chain.head_height,
        head_hash: chain.head_hash,
        finalized_height: chain.finalized_height,
        finalized_hash: chain.finalized_hash,
        earliest_height: chain.earliest_height,
        sync_state: state_name(view.state).to_owned(),
        peers: peers.iter().filter(|p| p.connected).count(),
        target_height: view.target,
        backfill_complete: view.backfill_complete,
        disk: DiskJson {
            state: if s.disk.is_full() { "disk_full" } else { "ok" }.to_owned(),
            free_bytes: s.disk.free(),
            min_free_bytes: s.disk.min_free(),
            data_dir: s.disk.data_dir().display().to_string(),
        },
    })
}

/// The network's peers and scores, with each one's Status from the engine.
async fn peers(State(s): State<ApiState>) -> Json<Vec<PeerJson>> {
    let list = s.network.peers().await;
    let engine = s.peers.borrow().clone();
    Json(
        list.into_iter()
            .map(|p| {
                let view = engine.get(&p.peer_id).filter(|_| p.connected);
                PeerJson {
                    peer_id: p.peer_id.to_string(),
                    connected: p.connected,
                    score: p.score,
                    banned: p.banned,
                    head_height: view.map(|v| v.status.head_height),
                    earliest_height: view.map(|v| v.status.earliest_height),
                    counts_for: view.and_then(|v| v.counts_for),
                    agent: p.agent,
                }
            })
            .collect(),
    )
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

async fn read_block(
    store: Arc<BlockStore>,
    read: impl FnOnce(&BlockStore) -> Result<Option<Block>, syncnode_store::StoreError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(move || read(&store)).await {
        Ok(Ok(Some(block))) => axum::Json(BlockJson::from(&block)).into_response(),
        Ok(Ok(None)) => not_found("no such block".into()),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn block_by_height(State(s): State<ApiState>, Path(height): Path<String>) -> Response {
    let Ok(height) = height.parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, "height must be a decimal number").into_response();
    };
    read_block(s.store, move |store| store.block_at(height)).await
}

async fn block_by_hash(State(s): State<ApiState>, Path(hash): Path<String>) -> Response {
    let hash: Hash = match hash.parse() {
        Ok(h) => h,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("hash: {e}")).into_response(),
    };
    read_block(s.store, move |store| store.block(&hash)).await
}

async fn metrics(State(s): State<ApiState>) -> Response {
    s.disk.free();
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
