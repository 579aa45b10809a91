//! Link emulation for the lab: one-way delay, upload bandwidth and loss on every TCP connection
//! the node makes or accepts, in user space inside the transport (docs/lab.md says why).
//!
//! Each connection's writes go into a delay line: a chunk written at `t` leaves the node's
//! upload link once the connection's earlier chunks have left, at the connection's share of
//! `upload_bytes_per_sec`, and reaches the socket `delay` later. Flows share the link fairly, as
//! under Linux's default `fq_codel`: while a chunk is sent, every other connection with bytes
//! still to leave the node sends as many of them, up to the chunk's own size, so a chunk takes
//! its own bytes' time plus the others' share of it (a short frame on another connection costs
//! a bulk transfer only that frame's time, two bulk transfers take half the rate each). A task
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
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Each connection with bytes still to leave the node, and when its last byte leaves.
    sending: Mutex<Vec<(u64, Instant)>>,
    /// Names the next connection in `sending`.
    next_connection: AtomicU64,
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
            sending: Mutex::new(Vec::new()),
            next_connection: AtomicU64::new(0),
            runtime,
        }))
    }

    /// When `len` bytes written now on `connection`, whose earlier bytes leave the node at
    /// `free_at`, have left it: their own time at the full rate, plus, for every other
    /// connection still sending then, as much of its remaining time as overlaps (at most the
    /// chunk's own time: fair shares, see the module).
    fn departure(&self, connection: u64, len: usize, now: Instant, free_at: Instant) -> Instant {
        let start = free_at.max(now);
        let Some(rate) = self.config.upload_bytes_per_sec else {
            return start;
        };
        let own = Duration::from_secs_f64(len as f64 / rate as f64);
        let mut sending = lock(&self.sending);
        sending.retain(|(_, until)| *until > now);
        let others: Duration = sending
            .iter()
            .filter(|(id, _)| *id != connection)
            .map(|(_, until)| until.saturating_duration_since(start).min(own))
            .sum();
        let departs = start + own + others;
        match sending.iter_mut().find(|(id, _)| *id == connection) {
            Some(entry) => entry.1 = departs,
            None => sending.push((connection, departs)),
        }
        departs
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
        self.runtime.spawn(run_writer(line.clone(), write));
        ShapedStream {
            read,
            connection: self.next_connection.fetch_add(1, Ordering::Relaxed),
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
    /// Names this connection on the uplink.
    connection: u64,
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
        let now = Instant::now();
        this.free_at = this.uplink.departure(this.connection, len, now, this.free_at);
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
async fn run_writer(line: Arc<DelayLine>, mut socket: OwnedWriteHalf) {
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
        state.bytes = state.bytes.saturating_sub(due.len());
        if let Err(e) = written {
            state.failed = Some(e.kind());
            state.chunks.clear();
            state.bytes = 0;
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
        let alone = uplink.departure(0, 100_000, now, now);
        assert_eq!(alone - now, Duration::from_millis(100));
        let after = uplink.departure(0, 100_000, now, alone);
        assert_eq!(
            after - now,
            Duration::from_millis(200),
            "a connection's bytes leave in order"
        );
        // Connection 0 still sending, 1 and 2 with a second each to send: the fourth gets a
        // quarter.
        for connection in 1..=2 {
            uplink.departure(connection, 1_000_000, now, now);
        }
        let shared = uplink.departure(3, 100_000, now, now);
        assert_eq!(
            shared - now,
            Duration::from_millis(400),
            "a quarter of the link each"
        );
    }

    #[tokio::test]
    async fn a_short_frame_elsewhere_costs_a_bulk_transfer_only_its_own_time() {
        let uplink = Uplink::new(link(50, Some(1_000_000))).expect("uplink");
        let now = Instant::now();
        // A 100-byte frame (0.1 ms of the link) on one connection, a 100 KB chunk on another.
        let frame = uplink.departure(0, 100, now, now);
        assert_eq!(frame - now, Duration::from_micros(100));
        let bulk = uplink.departure(1, 100_000, now, now);
        assert_eq!(
            bulk - now,
            Duration::from_micros(100_100),
            "the frame takes its own 0.1 ms of the chunk's time, not half the link"
        );
        // Once the frame has left, the bulk connection has the whole link again.
        let later = bulk + Duration::from_millis(1);
        let next = uplink.departure(1, 100_000, later, bulk);
        assert_eq!(next - later, Duration::from_millis(100));
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

    #[tokio::test]
    async fn a_short_frame_on_one_stream_leaves_another_the_whole_rate() {
        use futures::AsyncWriteExt as _;
        let uplink = Uplink::new(link(50, Some(1_000_000))).expect("uplink");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut shaped = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            let dialled = tokio::net::TcpStream::connect(addr).await.expect("connect");
            accepted.push(listener.accept().await.expect("accept"));
            shaped.push(uplink.shape(dialled));
        }
        let [mut control, mut bulk] = <[ShapedStream; 2]>::try_from(shaped)
            .map_err(|_| ())
            .expect("two");
        control.write_all(&[1; 100]).await.expect("frame");
        let started = Instant::now();
        bulk.write_all(&[2; 50_000]).await.expect("chunk");
        let leaves = bulk.free_at.saturating_duration_since(started);
        assert!(
            leaves < Duration::from_millis(75),
            "50 KB at 1 MB/s leave after {leaves:?}: the frame still in its line halved the rate"
        );
    }
}
