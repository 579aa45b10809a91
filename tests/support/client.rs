//! Raw libp2p clients for the adversarial tests: a bare swarm (TCP + Noise + Yamux with
//! libp2p-stream), one range request on a fresh stream, a flood of maximal range requests, and
//! the test's runtime and a reader of a process's peak memory.
//!
//! Every loop is bounded by a deadline or a count; every exchange by a timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::AsyncWriteExt;
use libp2p::{PeerId, StreamProtocol, Swarm, identity, noise, tcp, yamux};
use prost::Message;
use syncnode_proto::frame::{encode_frame, read_frame_bytes};
use syncnode_proto::{BLOCKS_BY_RANGE_PROTOCOL, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, STATUS_PROTOCOL, pb};
use syncnode_types::Height;

use crate::hostile::PeerStats;

/// Outcome of one request a client made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `OK` with this many blocks.
    Ok(usize),
    /// A non-OK response code.
    Refused(i32),
    /// No answer (stream refused, reset, closed or timed out).
    Failed,
}

/// Sends one range request on a fresh stream and reads the answer, within `deadline`.
pub async fn range_request(
    control: &mut libp2p_stream::Control,
    peer: PeerId,
    start: Height,
    count: u64,
    deadline: Duration,
) -> Outcome {
    let exchange = async {
        let mut stream = control
            .open_stream(peer, StreamProtocol::new(BLOCKS_BY_RANGE_PROTOCOL))
            .await
            .ok()?;
        let req = pb::BlocksByRangeRequest {
            start_height: start,
            count,
        };
        stream.write_all(&encode_frame(&req)).await.ok()?;
        stream.close().await.ok()?;
        let bytes = read_frame_bytes(&mut stream, MAX_RESPONSE_FRAME).await.ok()??;
        pb::BlocksResponse::decode(bytes).ok()
    };
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Some(resp)) if resp.code == 0 => Outcome::Ok(resp.blocks.len()),
        Ok(Some(resp)) => Outcome::Refused(resp.code),
        _ => Outcome::Failed,
    }
}

/// Floods `peer` with maximal range requests (count 1024 at starts spread below the head of
/// `status`) on `streams` concurrent streams, plus a Status request (`status`, a well-formed one)
/// each round of the first stream, until `until`.
pub async fn flood(
    control: libp2p_stream::Control,
    peer: PeerId,
    status: pb::Status,
    streams: usize,
    until: Instant,
    stats: Arc<PeerStats>,
) {
    let mut tasks = Vec::new();
    for lane in 0..streams {
        let (mut control, stats, status) = (control.clone(), stats.clone(), status.clone());
        let head = status.head_height;
        tasks.push(tokio::spawn(async move {
            let mut round: u64 = 0;
            while Instant::now() < until {
                round += 1;
                let start = (lane as u64 * 7919 + round * 104_729) % head.max(1);
                PeerStats::bump(&stats.flood_sent);
                match range_request(&mut control, peer, start, 1024, Duration::from_secs(15)).await {
                    Outcome::Ok(_) => PeerStats::bump(&stats.flood_ok),
                    Outcome::Refused(_) => PeerStats::bump(&stats.flood_refused),
                    Outcome::Failed => {
                        PeerStats::bump(&stats.flood_failed);
                        // Refused streams fail at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                if lane == 0 {
                    status_request(&mut control, peer, &status).await;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn status_request(control: &mut libp2p_stream::Control, peer: PeerId, status: &pb::Status) {
    let exchange = async {
        let mut stream = control
            .open_stream(peer, StreamProtocol::new(STATUS_PROTOCOL))
            .await
            .ok()?;
        stream.write_all(&encode_frame(status)).await.ok()?;
        stream.close().await.ok()?;
        read_frame_bytes(&mut stream, MAX_REQUEST_FRAME).await.ok()?
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), exchange).await;
}

/// A bare swarm on a given identity: TCP (nodelay) + Noise + Yamux, raw streams.
pub fn raw_swarm(key: identity::Keypair) -> Swarm<libp2p_stream::Behaviour> {
    libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

/// A runtime for the hostile peers and clients of one test (two worker threads).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Peak resident set (VmHWM) and current RSS (VmRSS) of process `pid`, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}
