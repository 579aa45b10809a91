//! The serving gate: what a serving task must be granted before it reads blocks.
//!
//! Two things are shared by every requester: the bytes of blocks read for responses and not yet
//! written (at most `max_serving_bytes`), and, when configured, the blocks the node may send per
//! second (the pacer). A serving task asks the gate for both before it reads and waits, holding
//! nothing, until it is granted or its deadline passes. A grant is room for bytes
//! ([`HeldBytes`], given back when the response is written or dropped) and a number of blocks the
//! task may send now; the task reads no more than either, so an answer larger than what is free
//! goes out short (a prefix of what was asked, never skipping a height) instead of waiting for
//! room. PROTOCOL.md names three reasons to stop early (the head, a gap, the frame limit) and
//! charges none; a requester cannot tell this stop from those, and ours asks on from the last
//! height it got.
//!
//! # Fairness
//! Waiting requests are queued by requester, and freed room goes to requesters in turn by
//! start-time fair queueing: each requester carries a tag, the bytes granted to it so far
//! (a requester that was idle restarts at the tag of the last grant, so idling earns nothing),
//! and the waiting requester with the lowest tag is served first. A requester never holds more
//! than its share, `max_serving_bytes / (requesters holding or waiting + 1)` (one share kept
//! for a requester yet to come, never below one block of the largest payload), so while
//! flooders hold their shares a newcomer still finds room and comes first. The pacer is a token
//! bucket (one second of burst); the requester first in turn takes at most what has
//! accumulated, once a tenth of a second's worth (or its whole request) is there, so one
//! request of 1,024 blocks does not hold everyone else's turn for a second.
//!
//! # While our own sync is behind
//! A second pacer, `serve_blocks_per_sec_while_syncing`, applies on top of the first only while
//! the node says its own sync is behind ([`SyncingFlag`], set by the node's event loop through
//! [`crate::NetworkHandle::set_syncing`]): serving then costs at most that many blocks a second
//! of the CPU and disk the node's own import needs, however many peers ask. Requesters share it
//! in turn like the other. A synced node does not draw on it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use libp2p::PeerId;
use syncnode_proto::MAX_RESPONSE_FRAME;
use tokio::sync::oneshot;

use crate::config::Quota;
use crate::rate_limit::TokenBucket;

/// Room for one block of the largest payload with its header, signature and framing: the least
/// room granted, so that a granted answer holds at least one block.
pub const MIN_ROOM: usize = syncnode_types::MAX_PAYLOAD_BYTES + 1024;

/// Room and blocks granted to one serving task.
pub struct Grant {
    /// Room for the bytes of the blocks it reads, held until the response is written.
    pub held: HeldBytes,
    /// Blocks it may send now (its request's count when the pacer is off).
    pub blocks: u64,
}

/// Room held in the gate's byte budget, given back (to the next requester in turn) on drop.
pub struct HeldBytes {
    gate: Arc<Shared>,
    peer: PeerId,
    bytes: usize,
}

impl HeldBytes {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back what is held beyond `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            let unused = self.bytes - bytes;
            self.bytes = bytes;
            self.gate.give_back(&self.peer, unused, true);
        }
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.gate.give_back(&self.peer, self.bytes, false);
    }
}

/// The gate serving tasks share.
#[derive(Clone)]
pub struct ServeGate {
    shared: Arc<Shared>,
}

/// Whether the node's own sync is behind, as the node last said: a plain atomic, so the node
/// sets it without waiting for the network's task and the gate reads it without a message.
#[derive(Clone, Debug, Default)]
pub struct SyncingFlag(Arc<AtomicBool>);

impl SyncingFlag {
    /// Records whether our own sync is behind.
    pub fn set(&self, syncing: bool) {
        self.0.store(syncing, Ordering::Relaxed);
    }

    /// Whether our own sync is behind.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

struct Shared {
    max: usize,
    min_room: usize,
    syncing: SyncingFlag,
    state: Mutex<State>,
}

struct Waiter {
    seq: u64,
    want: u64,
    tx: oneshot::Sender<Grant>,
}

#[derive(Default)]
struct Requester {
    held: usize,
    /// Bytes granted so far (start-time fair queueing's tag).
    tag: u64,
    waiting: VecDeque<Waiter>,
}

/// The pacer: a token bucket of blocks with one second of burst.
struct Pacer {
    bucket: TokenBucket,
    /// A request is granted once this many blocks (a tenth of a second's worth, or its whole
    /// request) are there, so one large request does not hold everyone's turn for a second.
    quantum: u64,
}

impl Pacer {
    fn new(rate: u32) -> Self {
        let rate = rate.max(1);
        Pacer {
            bucket: TokenBucket::new(Quota::new(rate, f64::from(rate)), Instant::now()),
            quantum: u64::from(rate / 10).max(1),
        }
    }

    /// Blocks a request for `want` may take now, or when to look again.
    fn take(&mut self, want: u64, now: Instant) -> Result<u64, Instant> {
        let need = want.min(self.quantum);
        if self.bucket.available(now) >= need {
            Ok(want.min(self.bucket.available(now)))
        } else {
            Err(self.bucket.ready_at(need, now))
        }
    }
}

#[derive(Default)]
struct State {
    held: usize,
    peak: usize,
    requesters: HashMap<PeerId, Requester>,
    /// The tag of the last grant: where a requester that was idle starts again.
    vtime: u64,
    tokens: Option<Pacer>,
    /// The pacer that applies too while our own sync is behind.
    syncing_tokens: Option<Pacer>,
    seq: u64,
}

impl State {
    fn share(&self, max: usize, min_room: usize) -> usize {
        (max / (self.requesters.len() + 1)).max(min_room).min(max)
    }

    /// The waiting requester first in turn that has room left in its share: lowest tag, then
    /// oldest request.
    fn next_in_turn(&self, share: usize, min_room: usize) -> Option<PeerId> {
        self.requesters
            .iter()
            .filter(|(_, r)| share.saturating_sub(r.held) >= min_room)
            .filter_map(|(peer, r)| r.waiting.front().map(|w| ((r.tag, w.seq), *peer)))
            .min_by_key(|(key, _)| *key)
            .map(|(_, peer)| peer)
    }

    /// The pacers that apply now: the global one, and while `syncing` the one for that.
    fn pacers(&mut self, syncing: bool) -> impl Iterator<Item = &mut Pacer> {
        let syncing_tokens = self.syncing_tokens.as_mut().filter(|_| syncing);
        self.tokens.as_mut().into_iter().chain(syncing_tokens)
    }

    /// Blocks of `want` every pacer that applies may grant now, or when to look again.
    fn take_tokens(&mut self, want: u64, syncing: bool, now: Instant) -> Result<u64, Instant> {
        let mut blocks = want;
        for pacer in self.pacers(syncing) {
            blocks = pacer.take(blocks, now)?;
        }
        Ok(blocks)
    }

    fn forget_if_idle(&mut self, peer: &PeerId) {
        if self
            .requesters
            .get(peer)
            .is_some_and(|r| r.held == 0 && r.waiting.is_empty())
        {
            self.requesters.remove(peer);
        }
    }
}

impl ServeGate {
    /// A gate over `max_bytes` of blocks held, pacing `blocks_per_sec` when given.
    pub fn new(max_bytes: usize, blocks_per_sec: Option<u32>) -> Self {
        Self::with_syncing_cap(max_bytes, blocks_per_sec, None)
    }

    /// A gate as [`ServeGate::new`] that also paces `while_syncing` blocks a second, when
    /// given, while its [`SyncingFlag`] is set.
    pub fn with_syncing_cap(
        max_bytes: usize,
        blocks_per_sec: Option<u32>,
        while_syncing: Option<u32>,
    ) -> Self {
        let max = max_bytes.max(1);
        ServeGate {
            shared: Arc::new(Shared {
                max,
                min_room: MIN_ROOM.min(max),
                syncing: SyncingFlag::default(),
                state: Mutex::new(State {
                    tokens: blocks_per_sec.map(Pacer::new),
                    syncing_tokens: while_syncing.map(Pacer::new),
                    ..State::default()
                }),
            }),
        }
    }

    /// The flag the node sets while its own sync is behind.
    pub fn syncing_flag(&self) -> SyncingFlag {
        self.shared.syncing.clone()
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.shared.lock().held
    }

    /// The most bytes held at once so far.
    pub fn peak(&self) -> usize {
        self.shared.lock().peak
    }

    /// Waits in `peer`'s turn, until `deadline` at most, for room and for up to `want` blocks.
    /// `None` when the deadline passed first.
    pub async fn admit(&self, peer: PeerId, want: u64, deadline: Instant) -> Option<Grant> {
        let (tx, mut rx) = oneshot::channel();
        let seq = {
            let mut state = self.shared.lock();
            state.seq += 1;
            let seq = state.seq;
            let vtime = state.vtime;
            let requester = state.requesters.entry(peer).or_default();
            if requester.waiting.is_empty() && requester.held == 0 {
                requester.tag = requester.tag.max(vtime);
            }
            requester.waiting.push_back(Waiter {
                seq,
                want: want.max(1),
                tx,
            });
            seq
        };
        loop {
            let wake = self.shared.dispatch().map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                granted = &mut rx => return granted.ok(),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        {
            let mut state = self.shared.lock();
            if let Some(requester) = state.requesters.get_mut(&peer) {
                requester.waiting.retain(|w| w.seq != seq);
            }
            state.forget_if_idle(&peer);
        }
        // One requester fewer may leave the others a larger share.
        self.shared.dispatch();
        // Granted just as the deadline passed: still in time to use it.
        rx.try_recv().ok()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere while counting; the counts are still whole
        // (every update is a few plain assignments), so keep serving with them.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Gives back `bytes` of `peer`'s room; `unused` when they were granted and never read
    /// into, so they do not count as served.
    fn give_back(self: &Arc<Self>, peer: &PeerId, bytes: usize, unused: bool) {
        {
            let mut state = self.lock();
            state.held = state.held.saturating_sub(bytes);
            if let Some(requester) = state.requesters.get_mut(peer) {
                requester.held = requester.held.saturating_sub(bytes);
                if unused {
                    requester.tag = requester.tag.saturating_sub(bytes as u64);
                }
            }
            state.forget_if_idle(peer);
        }
        if bytes > 0 {
            self.dispatch();
        }
    }

    /// Grants the requesters first in turn while room and tokens last; returns when to look
    /// again if the pacer is what the first in turn waits for.
    fn dispatch(self: &Arc<Self>) -> Option<Instant> {
        let mut refused = Vec::new();
        let refill_at = {
            let mut state = self.lock();
            loop {
                match self.grant_next(&mut state) {
                    Step::Granted => {}
                    Step::Refused(grant) => refused.push(grant),
                    Step::Blocked => break None,
                    Step::Tokens(at) => break Some(at),
                }
            }
        };
        // Grants whose task gave up: dropped here, outside the lock, they give their room back.
        drop(refused);
        refill_at
    }

    /// One grant to the requester first in turn, if room and tokens allow.
    fn grant_next(self: &Arc<Self>, state: &mut State) -> Step {
        let share = state.share(self.max, self.min_room);
        let Some(peer) = state.next_in_turn(share, self.min_room) else {
            return Step::Blocked;
        };
        let Some(requester) = state.requesters.get_mut(&peer) else {
            return Step::Blocked;
        };
        let (own, tag) = (requester.held, requester.tag);
        let Some(want) = requester.waiting.front().map(|w| w.want) else {
            return Step::Blocked;
        };
        if requester.waiting.front().is_some_and(|w| w.tx.is_closed()) {
            requester.waiting.pop_front();
            state.forget_if_idle(&peer);
            return Step::Granted;
        }
        let room = share
            .saturating_sub(own)
            .min(self.max.saturating_sub(state.held))
            .min(MAX_RESPONSE_FRAME);
        if room < self.min_room {
            return Step::Blocked;
        }
        let syncing = self.syncing.get();
        let blocks = match state.take_tokens(want, syncing, Instant::now()) {
            Ok(blocks) => blocks,
            Err(at) => return Step::Tokens(at),
        };
        let Some(waiter) = state
            .requesters
            .get_mut(&peer)
            .and_then(|r| r.waiting.pop_front())
        else {
            return Step::Blocked;
        };
        for pacer in state.pacers(syncing) {
            pacer.bucket.spend(blocks);
        }
        state.held += room;
        state.peak = state.peak.max(state.held);
        state.vtime = tag;
        if let Some(r) = state.requesters.get_mut(&peer) {
            r.held += room;
            r.tag = tag.saturating_add(room as u64);
        }
        let held = HeldBytes {
            gate: self.clone(),
            peer,
            bytes: room,
        };
        match waiter.tx.send(Grant { held, blocks }) {
            Ok(()) => Step::Granted,
            Err(grant) => Step::Refused(grant),
        }
    }
}

/// What one dispatch step did.
enum Step {
    /// A request was granted (or a cancelled one dropped from the queue).
    Granted,
    /// A grant whose task had just gone: to be dropped outside the lock.
    Refused(Grant),
    /// Nothing can be granted until room is given back.
    Blocked,
    /// The first in turn waits for the pacer's tokens until then.
    Tokens(Instant),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: usize = 1024 * 1024;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn a_newcomer_gets_the_room_freed_before_a_requester_at_its_share() {
        // 4 room units: a flooder alone may take 2 (max / (1 + 1)), then waits for its own.
        let gate = ServeGate::new(4 * MIN_ROOM, None);
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let first = gate.admit(flooder, 1, soon()).await.expect("room");
        assert_eq!(first.held.bytes(), 2 * MIN_ROOM);
        // Its next requests wait: it holds its share.
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit(flooder, 1, soon()).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        // A newcomer finds room at once, within its own share (4 / (2 + 1) units).
        let other = gate.admit(honest, 1, soon()).await.expect("room for a newcomer");
        assert_eq!(other.held.bytes(), 4 * MIN_ROOM / 3);
        assert!(gate.held() <= 4 * MIN_ROOM);
        drop(first);
        let next = waiting
            .await
            .expect("task")
            .expect("room once its own was written");
        assert!(next.held.bytes() >= MIN_ROOM);
        assert!(gate.peak() <= 4 * MIN_ROOM);
    }

    #[tokio::test]
    async fn freed_room_goes_to_the_requester_served_least() {
        let gate = ServeGate::new(3 * MIN_ROOM, None);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        // a takes its share (3 / 2 units), b its own (1 unit): half a unit is left, too little.
        let held_a = gate.admit(a, 1, soon()).await.expect("room");
        let held_b = gate.admit(b, 1, soon()).await.expect("room");
        assert_eq!(gate.held(), 5 * MIN_ROOM / 2);
        let mut waiters = Vec::new();
        // a asks again first, then c (served nothing yet) asks.
        for peer in [a, c] {
            let gate = gate.clone();
            waiters.push(tokio::spawn(async move { gate.admit(peer, 1, soon()).await }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(held_b);
        let c_grant = bounded(waiters.pop().expect("c"))
            .await
            .expect("c gets the freed room");
        assert!(!waiters[0].is_finished(), "a waits: c was served less");
        drop((held_a, c_grant));
        assert!(bounded(waiters.remove(0)).await.is_some());
    }

    #[tokio::test]
    async fn a_wait_ends_by_its_deadline_holding_nothing() {
        let gate = ServeGate::new(MIN_ROOM, None);
        let held = gate.admit(PeerId::random(), 1, soon()).await.expect("room");
        let deadline = Instant::now() + Duration::from_millis(200);
        assert!(gate.admit(PeerId::random(), 1, deadline).await.is_none());
        assert!(Instant::now() < deadline + Duration::from_secs(1));
        drop(held);
        assert_eq!(gate.held(), 0);
        assert!(gate.admit(PeerId::random(), 1, soon()).await.is_some());
    }

    #[tokio::test]
    async fn the_pacer_grants_what_it_has_in_turn_and_shrunk_room_is_given_back() {
        // 100 blocks a second, one second of burst: the first asks 80 and gets them, the next
        // asks 80 and gets the 20 left (more than a tenth of a second's worth) at once.
        let gate = ServeGate::new(64 * MIB, Some(100));
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = gate.admit(a, 80, soon()).await.expect("granted");
        assert_eq!(first.blocks, 80);
        let mut second = gate.admit(b, 80, soon()).await.expect("granted short");
        assert!((20..=22).contains(&second.blocks), "{}", second.blocks);
        // The next waits for tokens (10 at least), holding nothing meanwhile.
        let (held, granted) = (gate.held(), second.held.bytes());
        second.held.shrink_to(1000);
        assert_eq!(gate.held(), held - granted + 1000);
        let asked = Instant::now();
        let third = gate.admit(a, 80, soon()).await.expect("granted");
        assert!(third.blocks >= 10 && third.blocks < 80, "{}", third.blocks);
        assert!(
            asked.elapsed() >= Duration::from_millis(50),
            "{:?}",
            asked.elapsed()
        );
    }

    #[tokio::test]
    async fn the_syncing_cap_paces_only_while_the_flag_is_set() {
        let gate = ServeGate::with_syncing_cap(64 * MIB, None, Some(100));
        let (a, b) = (PeerId::random(), PeerId::random());
        // Synced: the whole request at once, however large.
        assert_eq!(gate.admit(a, 1000, soon()).await.expect("granted").blocks, 1000);
        gate.syncing_flag().set(true);
        // Syncing: one second of burst (100), then a tenth of a second's worth at a time.
        assert_eq!(gate.admit(a, 1000, soon()).await.expect("granted").blocks, 100);
        let asked = Instant::now();
        let next = gate.admit(b, 1000, soon()).await.expect("granted");
        assert!((10..=20).contains(&next.blocks), "{}", next.blocks);
        assert!(
            asked.elapsed() >= Duration::from_millis(50),
            "{:?}",
            asked.elapsed()
        );
        gate.syncing_flag().set(false);
        assert_eq!(gate.admit(b, 1000, soon()).await.expect("granted").blocks, 1000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requesters_never_hold_more_than_the_budget() {
        let max = 6 * MIN_ROOM;
        let gate = ServeGate::new(max, Some(20_000));
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let mut tasks = Vec::new();
        for (i, peer) in peers.iter().copied().enumerate() {
            for lane in 0..4u64 {
                let gate = gate.clone();
                tasks.push(tokio::spawn(async move {
                    let mut granted = 0;
                    for round in 0..20u64 {
                        let deadline = Instant::now() + Duration::from_secs(3);
                        if let Some(mut grant) = gate.admit(peer, 64, deadline).await {
                            assert!(grant.blocks >= 1 && grant.blocks <= 64);
                            grant.held.shrink_to((i + 1) * 1000 + (lane + round) as usize);
                            tokio::time::sleep(Duration::from_millis(1 + (round % 3))).await;
                            granted += 1;
                        }
                    }
                    granted
                }));
            }
        }
        let mut granted = 0;
        for task in tasks {
            granted += bounded(task).await;
        }
        assert!(granted > 0);
        assert!(gate.peak() <= max, "peak {} over {max}", gate.peak());
        assert_eq!(gate.held(), 0);
    }

    async fn bounded<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("in time")
            .expect("task")
    }
}
