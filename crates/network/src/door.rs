//! The door: inbound connections still in their handshake, bounded so that stalled ones cannot
//! keep honest peers out.
//!
//! [`Door`] wraps the raw TCP transport, under the multistream, Noise and Yamux upgrades. Each
//! inbound connection is booked from its arrival until its handshake completes (or fails, or the
//! swarm refuses it), and counts the bytes its peer has sent meanwhile: its *progress*. A
//! connection that sent its first multistream line and then nothing stops progressing; an
//! honest peer keeps sending handshake messages.
//!
//! At its bound the door never turns a newcomer away (at arrival an honest peer and a stalled
//! one look the same, and a stalled peer re-opens what is closed faster than anyone): it
//! closes the least progressed handshake instead, oldest first. Room is shared per subnet (an
//! IPv4 /24, an IPv6 /64): a subnet that holds `max_pending_per_subnet` handshakes makes room
//! among its own, and when all subnets together hold `max_pending`, the subnet holding the most
//! gives one up. A newcomer that has sent nothing yet is spared for [`GRACE`], so that a burst of
//! arrivals cannot close it before it had a chance to speak; while only such newcomers are there
//! to close, none is closed and the swarm's own bound on pending connections (twice
//! `max_pending`) is the backstop. Handshakes that complete leave the book and are never closed
//! by it; [`HandshakeLimits::timeout`] bounds the inbound upgrade as a whole.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{MapOk, TryFutureExt};
use futures::task::AtomicWaker;
use futures::{AsyncRead, AsyncWrite};
use libp2p::Multiaddr;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::{ConnectedPoint, Transport};

use crate::ip_limit::ip_of;

/// How long a newcomer that has sent nothing is spared from being closed to make room.
pub const GRACE: Duration = Duration::from_secs(1);

/// Bounds on inbound handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Deadline of an inbound connection's whole upgrade (multistream, Noise, Yamux); default
    /// 5 s. Outbound dials keep libp2p's.
    pub timeout: Duration,
    /// Most inbound handshakes in progress at once (default 100).
    pub max_pending: usize,
    /// Most of them from one subnet, an IPv4 /24 or IPv6 /64 (default 16).
    pub max_pending_per_subnet: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(5),
            max_pending: 100,
            max_pending_per_subnet: 16,
        }
    }
}

/// The subnet an address counts in: its IPv4 /24 or IPv6 /64 (`None` for no IP).
fn subnet(addr: &Multiaddr) -> Option<IpAddr> {
    Some(match ip_of(addr)? {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            IpAddr::V4([a, b, c, 0].into())
        }
        IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) & !u128::from(u64::MAX)).into()),
    })
}

/// What a booked connection and the book share.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    closed: AtomicBool,
    waker: AtomicWaker,
}

impl Progress {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

struct Entry {
    key: (Multiaddr, Multiaddr),
    subnet: Option<IpAddr>,
    arrived: Instant,
    progress: Arc<Progress>,
}

impl Entry {
    /// Its rank when one must be closed (lowest first): fewest bytes sent, then oldest; `None`
    /// for a newcomer that has sent nothing yet and is spared.
    fn rank(&self, now: Instant) -> Option<(u64, Instant)> {
        let bytes = self.progress.bytes.load(Ordering::Relaxed);
        let spared = bytes == 0 && now.saturating_duration_since(self.arrived) < GRACE;
        (!spared).then_some((bytes, self.arrived))
    }
}

/// Inbound handshakes in progress.
struct Book {
    limits: HandshakeLimits,
    next_id: u64,
    pending: HashMap<u64, Entry>,
    by_key: HashMap<(Multiaddr, Multiaddr), u64>,
    closed: u64,
}

impl Book {
    fn new(limits: HandshakeLimits) -> Self {
        Book {
            limits,
            next_id: 0,
            pending: HashMap::new(),
            by_key: HashMap::new(),
            closed: 0,
        }
    }

    /// Books a newcomer, closing the handshake it displaces if the door is at a bound.
    fn arrive(&mut self, local: &Multiaddr, remote: &Multiaddr, now: Instant) -> (u64, Arc<Progress>) {
        let subnet = subnet(remote);
        let mut per_subnet: HashMap<Option<IpAddr>, usize> = HashMap::new();
        for entry in self.pending.values() {
            *per_subnet.entry(entry.subnet).or_default() += 1;
        }
        let own = per_subnet.get(&subnet).copied().unwrap_or(0);
        let crowded = if own >= self.limits.max_pending_per_subnet.max(1) {
            Some(subnet)
        } else if self.pending.len() >= self.limits.max_pending.max(1) {
            per_subnet.into_iter().max_by_key(|(_, n)| *n).map(|(s, _)| s)
        } else {
            None
        };
        if let Some(crowded) = crowded {
            self.close_least_progressed(crowded, now);
        }
        let id = self.next_id;
        self.next_id += 1;
        let progress = Arc::new(Progress::default());
        let key = (local.clone(), remote.clone());
        self.by_key.insert(key.clone(), id);
        self.pending.insert(
            id,
            Entry {
                key,
                subnet,
                arrived: now,
                progress: progress.clone(),
            },
        );
        (id, progress)
    }

    fn close_least_progressed(&mut self, subnet: Option<IpAddr>, now: Instant) {
        let victim = self
            .pending
            .iter()
            .filter(|(_, e)| e.subnet == subnet)
            .filter_map(|(id, e)| Some((e.rank(now)?, *id)))
            .min()
            .map(|(_, id)| id);
        if let Some(entry) = victim.and_then(|id| self.remove(id)) {
            tracing::debug!(remote = %entry.key.1, "inbound handshakes at their bound: closed the least progressed");
            self.closed += 1;
            entry.progress.close();
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.pending.remove(&id)?;
        if self.by_key.get(&entry.key) == Some(&id) {
            self.by_key.remove(&entry.key);
        }
        Some(entry)
    }

    /// The handshake of the connection between these addresses completed.
    fn completed(&mut self, local: &Multiaddr, remote: &Multiaddr) {
        if let Some(id) = self.by_key.get(&(local.clone(), remote.clone())).copied() {
            self.remove(id);
        }
    }
}

/// The shared view of the door: what the transport wrapper books and the upgrade's end clears.
#[derive(Clone)]
pub struct DoorBook(Arc<Mutex<Book>>);

impl DoorBook {
    /// A book with nothing pending.
    pub fn new(limits: HandshakeLimits) -> Self {
        DoorBook(Arc::new(Mutex::new(Book::new(limits))))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Book) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut book| f(&mut book))
    }

    /// Called once an inbound connection's upgrade has completed: it leaves the book.
    pub fn handshake_completed(&self, endpoint: &ConnectedPoint) {
        if let ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } = endpoint
        {
            self.with(|book| book.completed(local_addr, send_back_addr));
        }
    }

    /// Inbound handshakes in progress.
    pub fn pending(&self) -> usize {
        self.with(|book| book.pending.len()).unwrap_or(0)
    }

    /// Handshakes closed to make room so far.
    pub fn closed(&self) -> u64 {
        self.with(|book| book.closed).unwrap_or(0)
    }
}

/// A booked connection's place in the book, given up when dropped.
struct Booking {
    book: DoorBook,
    id: u64,
    progress: Arc<Progress>,
}

impl Drop for Booking {
    fn drop(&mut self) {
        self.book.with(|book| book.remove(self.id));
    }
}

/// A raw connection that counts what its peer sends while its handshake is booked, and fails
/// once the door closes it.
pub struct DoorStream<S> {
    inner: S,
    booking: Option<Booking>,
}

impl<S> DoorStream<S> {
    fn outbound(inner: S) -> Self {
        DoorStream { inner, booking: None }
    }

    fn check(&mut self, cx: &Context<'_>) -> io::Result<()> {
        if let Some(booking) = &self.booking {
            booking.progress.waker.register(cx.waker());
            if booking.progress.closed.load(Ordering::SeqCst) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "inbound handshakes at their bound: this one made the least progress",
                ));
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DoorStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(booking)) = (&read, &self.booking) {
            booking.progress.bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DoorStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// An inbound connection on its way from the raw transport, booked from its arrival.
pub struct DoorUpgrade<F> {
    inner: F,
    booking: Option<Booking>,
}

impl<F, S, E> Future for DoorUpgrade<F>
where
    F: Future<Output = Result<S, E>> + Unpin,
{
    type Output = Result<DoorStream<S>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let stream = std::task::ready!(Pin::new(&mut self.inner).poll(cx))?;
        Poll::Ready(Ok(DoorStream {
            inner: stream,
            booking: self.booking.take(),
        }))
    }
}

/// The raw transport wrapped by the door (see the module documentation).
pub struct Door<T> {
    inner: T,
    book: DoorBook,
}

impl<T> Door<T> {
    /// `inner`'s inbound connections booked in `book`.
    pub fn new(inner: T, book: DoorBook) -> Self {
        Door { inner, book }
    }
}

impl<T> Transport for Door<T>
where
    T: Transport + Unpin,
    T::ListenerUpgrade: Unpin,
{
    type Output = DoorStream<T::Output>;
    type Error = T::Error;
    type ListenerUpgrade = DoorUpgrade<T::ListenerUpgrade>;
    type Dial = MapOk<T::Dial, fn(T::Output) -> DoorStream<T::Output>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        Ok(self
            .inner
            .dial(addr, opts)?
            .map_ok(DoorStream::outbound as fn(T::Output) -> DoorStream<T::Output>))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let event = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let booking = match &event {
            TransportEvent::Incoming {
                local_addr,
                send_back_addr,
                ..
            } => self
                .book
                .with(|book| book.arrive(local_addr, send_back_addr, Instant::now()))
                .map(|(id, progress)| Booking {
                    book: self.book.clone(),
                    id,
                    progress,
                }),
            _ => None,
        };
        Poll::Ready(event.map_upgrade(|inner| DoorUpgrade { inner, booking }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    fn limits(max_pending: usize, per_subnet: usize) -> HandshakeLimits {
        HandshakeLimits {
            timeout: Duration::from_secs(5),
            max_pending,
            max_pending_per_subnet: per_subnet,
        }
    }

    #[test]
    fn a_crowded_subnet_closes_its_own_least_progressed_handshake() {
        let local = addr("/ip4/10.0.0.1/tcp/9000");
        let mut book = Book::new(limits(10, 3));
        let t0 = Instant::now();
        let after = t0 + GRACE * 2;
        let a = book.arrive(&local, &addr("/ip4/10.1.1.1/tcp/1"), t0).1;
        let b = book.arrive(&local, &addr("/ip4/10.1.1.2/tcp/2"), t0).1;
        let c = book
            .arrive(
                &local,
                &addr("/ip4/10.1.1.3/tcp/3"),
                t0 + Duration::from_millis(1),
            )
            .1;
        a.bytes.store(20, Ordering::Relaxed);
        b.bytes.store(400, Ordering::Relaxed);
        c.bytes.store(20, Ordering::Relaxed);
        // Another subnet has its own room.
        let other = book.arrive(&local, &addr("/ip4/10.2.0.1/tcp/4"), after).1;
        assert!(!a.closed.load(Ordering::SeqCst) && !other.closed.load(Ordering::SeqCst));
        // A fourth from the crowded /24 closes the oldest of the least progressed there.
        book.arrive(&local, &addr("/ip4/10.1.1.9/tcp/5"), after);
        assert!(a.closed.load(Ordering::SeqCst));
        assert!(!b.closed.load(Ordering::SeqCst) && !c.closed.load(Ordering::SeqCst));
        assert_eq!(book.pending.len(), 4);
        assert_eq!(book.closed, 1);
    }

    #[test]
    fn at_the_global_bound_the_largest_subnet_gives_way_and_newcomers_are_spared() {
        let local = addr("/ip4/10.0.0.1/tcp/9000");
        let mut book = Book::new(limits(3, 8));
        let t0 = Instant::now();
        let stalled = book.arrive(&local, &addr("/ip4/10.1.1.1/tcp/1"), t0).1;
        stalled.bytes.store(20, Ordering::Relaxed);
        let fresh = book.arrive(&local, &addr("/ip4/10.1.1.2/tcp/2"), t0).1;
        let lone = book.arrive(&local, &addr("/ip4/10.9.9.9/tcp/3"), t0).1;
        lone.bytes.store(1, Ordering::Relaxed);
        // Within the grace the fresh one (nothing sent yet) is spared: the stalled one goes.
        book.arrive(&local, &addr("/ip4/10.5.5.5/tcp/4"), t0 + GRACE / 2);
        assert!(stalled.closed.load(Ordering::SeqCst));
        assert!(!fresh.closed.load(Ordering::SeqCst) && !lone.closed.load(Ordering::SeqCst));
        // A completed handshake leaves the book and is never closed by it.
        book.completed(&local, &addr("/ip4/10.1.1.2/tcp/2"));
        assert_eq!(book.pending.len(), 2);
        book.arrive(&local, &addr("/ip4/10.5.5.6/tcp/5"), t0 + GRACE * 2);
        book.arrive(&local, &addr("/ip4/10.5.5.7/tcp/6"), t0 + GRACE * 2);
        assert!(!fresh.closed.load(Ordering::SeqCst));
        assert!(book.pending.len() <= 3);
    }

    #[test]
    fn subnets_are_slash_24_and_slash_64() {
        assert_eq!(
            subnet(&addr("/ip4/192.0.2.77/tcp/1")),
            subnet(&addr("/ip4/192.0.2.1/tcp/2"))
        );
        assert_ne!(
            subnet(&addr("/ip4/192.0.2.77/tcp/1")),
            subnet(&addr("/ip4/192.0.3.77/tcp/1"))
        );
        assert_eq!(
            subnet(&addr("/ip6/2001:db8::1/tcp/1")),
            subnet(&addr("/ip6/2001:db8::ffff/tcp/1"))
        );
    }
}
