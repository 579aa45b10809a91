//! Link emulation for the lab: one-way delay, upload bandwidth and loss on every TCP connection
//! the node makes or accepts, in user space inside the transport (docs/lab.md says why).
//!
//! Each connection's writes go into a delay line: a chunk written at `t` leaves the node's
//! upload link once the connection's earlier chunks have left, at the connection's share of
//! `upload_bytes_per_sec` (the rate divided by the connections with bytes waiting: flows share
//! the link fairly, as under Linux's default `fq_codel`), and reaches the socket `delay` later. A task
//! per connection writes the chunks to the socket when they are due, so the muxer above sees
//! its writes accepted at once, as a kernel socket buffer would, and the receiver sees them late.
//! The bytes a connection has in its line are bounded ([`line_capacity`]); a full line makes
//! the writer wait, as a full socket buffer does. Reads are not touched: each node shapes what it
//! sends, so between two lab nodes with the same settings every direction has that delay.
//!
//! Loss is modelled as what it costs TCP: a chunk holding a lost segment (each 1,448-byte
//! segment lost with probability `loss`) and every later chunk of that connection wait a
//! retransmission timeout more ([`retransmission_timeout`]). Congestion-window reduction after a
//! loss is not modelled.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The emulated link of a node: what every connection it makes or accepts goes through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// One-way delay added to every byte the node sends.
    pub delay: Duration,
    /// Upload bandwidth shared by all the node's connections, in bytes per second; `None` for
    /// no limit.
    pub upload_bytes_per_sec: Option<u64>,
    /// Probability that a TCP segment is lost (0.0..1.0), paid as a retransmission timeout.
    pub loss: f64,
}

/// Bytes of one TCP segment on a 1,500-byte MTU (with timestamps), the unit of loss.
const SEGMENT: usize = 1448;
/// Largest chunk one write puts in the line.
const MAX_CHUNK: usize = 64 * 1024;
/// Bytes in one connection's line when the upload is not limited (the kernel's largest
/// default send buffer, `tcp_wmem`'s maximum).
const UNLIMITED_LINE: usize = 4 * 1024 * 1024;
/// Longest a closed connection's remaining bytes are written for before they are dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Most bytes one connection holds in its line: twice the bandwidth-delay product of a round
/// trip over this link (what a tuned TCP keeps in flight and queued), at least 64 KiB; 4 MiB
/// without a bandwidth limit.
pub fn line_capacity(config: &LinkConfig) -> usize {
    match config.upload_bytes_per_sec {
        None => UNLIMITED_LINE,
        Some(rate) => {
            let bdp = rate as f64 * config.delay.as_secs_f64() * 2.0;
            ((2.0 * bdp) as usize).clamp(64 * 1024, UNLIMITED_LINE)
        }
    }
}

/// What a lost segment costs: Linux's minimum retransmission timeout (200 ms), or twice the
/// round trip when that is longer (the timeout is the smoothed round trip plus its variance).
pub fn retransmission_timeout(config: &LinkConfig) -> Duration {
    Duration::from_millis(200).max(config.delay.saturating_mul(4))
}

/// The node's upload link, shared fairly by its connections with bytes waiting.
#[derive(Debug)]
pub struct Uplink {
    config: LinkConfig,
    /// Connections with bytes in their line.
    active: AtomicUsize,
    runtime: tokio::runtime::Handle,
}

impl Uplink {
    /// The uplink of `config`, whose connection writers run on the current tokio runtime.
    pub fn new(config: LinkConfig) -> io::Result<Arc<Uplink>> {
        if !(0.0..1.0).contains(&config.loss) || config.upload_bytes_per_sec == Some(0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "link loss must be in 0..1 and bandwidth non-zero",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        Ok(Arc::new(Uplink {
            config,
            active: AtomicUsize::new(0),
            runtime,
        }))
    }

    /// When `len` bytes written now on a connection whose earlier bytes leave the node at
    /// `free_at` have left it: at the connection's share of the rate.
    fn departure(&self, len: usize, now: Instant, free_at: Instant) -> Instant {
        let start = free_at.max(now);
        match self.config.upload_bytes_per_sec {
            None => start,
            Some(rate) => {
                let sharing = self.active.load(Ordering::Relaxed).max(1);
                start + Duration::from_secs_f64(len as f64 * sharing as f64 / rate as f64)
            }
        }
    }

    /// Whether a chunk of `len` bytes loses a segment.
    fn loses(&self, len: usize) -> bool {
        if self.config.loss <= 0.0 {
            return false;
        }
        let segments = len.div_ceil(SEGMENT) as i32;
        let delivered = (1.0 - self.config.loss).powi(segments);
        rand::random::<f64>() >= delivered
    }

    /// Wraps an accepted or dialled TCP stream in this link.
    pub fn shape(self: &Arc<Self>, stream: tokio::net::TcpStream) -> ShapedStream {
        let (read, write) = stream.into_split();
        let line = Arc::new(DelayLine {
            state: Mutex::new(LineState::default()),
            due: Notify::new(),
        });
        self.runtime.spawn(run_writer(line.clone(), write, self.clone()));
        ShapedStream {
            read,
            line,
            uplink: self.clone(),
            capacity: line_capacity(&self.config),
            free_at: Instant::now(),
            last_arrival: Instant::now(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One connection's bytes on the emulated wire, each chunk with the time it arrives.
#[derive(Default)]
struct LineState {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    /// The stream was closed or dropped: write what is left, then shut the socket.
    closed: bool,
    /// Writing to the socket failed; later writes fail with this.
    failed: Option<io::ErrorKind>,
    /// The writer waiting for room.
    waiting: Option<Waker>,
}

struct DelayLine {
    state: Mutex<LineState>,
    /// Wakes the socket writer when a chunk or the close is queued.
    due: Notify,
}

/// A TCP stream whose writes go through the node's emulated link.
pub struct ShapedStream {
    read: OwnedReadHalf,
    line: Arc<DelayLine>,
    uplink: Arc<Uplink>,
    capacity: usize,
    /// When this connection's bytes written so far have left the node.
    free_at: Instant,
    /// Arrival of this connection's last chunk: TCP delivers in order, so a chunk delayed by a
    /// loss holds back the ones after it.
    last_arrival: Instant,
}

impl AsyncRead for ShapedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut read_buf = ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.get_mut().read), cx, &mut read_buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read_buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for ShapedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut state = lock(&this.line.state);
        if let Some(kind) = state.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if state.closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let room = this.capacity.saturating_sub(state.bytes);
        if room == 0 {
            state.waiting = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let len = buf.len().min(room).min(MAX_CHUNK);
        if state.bytes == 0 {
            this.uplink.active.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        this.free_at = this.uplink.departure(len, now, this.free_at);
        let mut arrival = this.free_at + this.uplink.config.delay;
        if this.uplink.loses(len) {
            arrival += retransmission_timeout(&this.uplink.config);
        }
        arrival = arrival.max(this.last_arrival);
        this.last_arrival = arrival;
        state.chunks.push_back((arrival, buf[..len].to_vec()));
        state.bytes += len;
        drop(state);
        this.line.due.notify_one();
        Poll::Ready(Ok(len))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.line.state).failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.line.state).closed = true;
        self.line.due.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for ShapedStream {
    fn drop(&mut self) {
        lock(&self.line.state).closed = true;
        self.line.due.notify_one();
    }
}

/// Writes a line's chunks to the socket as they fall due; on close, what is left (for at most
/// [`DRAIN_LIMIT`]), then shuts the socket's write side.
async fn run_writer(line: Arc<DelayLine>, mut socket: OwnedWriteHalf, uplink: Arc<Uplink>) {
    let mut drain_deadline = None;
    loop {
        let (next, closed) = {
            let state = lock(&line.state);
            (state.chunks.front().map(|(at, _)| *at), state.closed)
        };
        if closed && drain_deadline.is_none() {
            drain_deadline = Some(Instant::now() + DRAIN_LIMIT);
        }
        let Some(at) = next else {
            if closed {
                break;
            }
            line.due.notified().await;
            continue;
        };
        tokio::time::sleep_until(at).await;
        let due = take_due(&line);
        let written = match drain_deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, socket.write_all(&due))
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
            None => socket.write_all(&due).await,
        };
        let mut state = lock(&line.state);
        let was_active = state.bytes > 0;
        state.bytes = state.bytes.saturating_sub(due.len());
        if let Err(e) = written {
            state.failed = Some(e.kind());
            state.chunks.clear();
            state.bytes = 0;
        }
        if was_active && state.bytes == 0 {
            uplink.active.fetch_sub(1, Ordering::Relaxed);
        }
        let failed = state.failed.is_some();
        if let Some(waker) = state.waiting.take() {
            waker.wake();
        }
        drop(state);
        if failed {
            return;
        }
    }
    let _ = socket.shutdown().await;
}

/// Every chunk due by now, in one buffer.
fn take_due(line: &DelayLine) -> Vec<u8> {
    let now = Instant::now();
    let mut state = lock(&line.state);
    let mut due = Vec::new();
    while let Some((at, _)) = state.chunks.front() {
        if *at > now {
            break;
        }
        if let Some((_, chunk)) = state.chunks.pop_front() {
            due.extend_from_slice(&chunk);
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(delay_ms: u64, rate: Option<u64>) -> LinkConfig {
        LinkConfig {
            delay: Duration::from_millis(delay_ms),
            upload_bytes_per_sec: rate,
            loss: 0.0,
        }
    }

    #[tokio::test]
    async fn busy_connections_share_the_uplink() {
        let uplink = Uplink::new(link(50, Some(1_000_000))).expect("uplink");
        let now = Instant::now();
        let alone = uplink.departure(100_000, now, now);
        assert_eq!(alone - now, Duration::from_millis(100));
        let after = uplink.departure(100_000, now, alone);
        assert_eq!(
            after - now,
            Duration::from_millis(200),
            "a connection's bytes leave in order"
        );
        uplink.active.store(4, Ordering::Relaxed);
        let shared = uplink.departure(100_000, now, now);
        assert_eq!(
            shared - now,
            Duration::from_millis(400),
            "a quarter of the link each"
        );
    }

    #[test]
    fn the_line_holds_two_round_trips_of_the_link() {
        assert_eq!(line_capacity(&link(50, Some(2_500_000))), 500_000);
        assert_eq!(line_capacity(&link(0, Some(2_500_000))), 64 * 1024);
        assert_eq!(line_capacity(&link(50, None)), UNLIMITED_LINE);
        assert_eq!(
            retransmission_timeout(&link(10, None)),
            Duration::from_millis(200)
        );
        assert_eq!(
            retransmission_timeout(&link(100, None)),
            Duration::from_millis(400)
        );
    }

    #[tokio::test]
    async fn bad_settings_are_refused() {
        let mut bad = link(1, None);
        bad.loss = 1.0;
        assert!(Uplink::new(bad).is_err());
        assert!(Uplink::new(link(1, Some(0))).is_err());
    }
}
