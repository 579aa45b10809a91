//! Token buckets: per-peer, per-protocol limits on inbound requests. The same bucket paces the
//! optional global cap on blocks served per second, granted in turn by [`crate::serve_gate`].
//!
//! They take the time as an argument (`Instant`), so tests drive them without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::config::{Quota, RateLimits};

/// The three request/response protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Status,
    BlocksByRange,
    BlocksByRoot,
}

impl Protocol {
    /// A short label for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Status => "status",
            Protocol::BlocksByRange => "blocks_by_range",
            Protocol::BlocksByRoot => "blocks_by_root",
        }
    }
}

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    quota: Quota,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(quota: Quota, now: Instant) -> Self {
        TokenBucket {
            quota,
            tokens: f64::from(quota.burst),
            updated: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.quota.per_second).min(f64::from(self.quota.burst));
        self.updated = now;
    }

    /// Takes `cost` tokens (capped at the burst) if the bucket holds them.
    pub fn try_take(&mut self, cost: u64, now: Instant) -> bool {
        self.refill(now);
        let cost = (cost as f64).min(f64::from(self.quota.burst));
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whole units the bucket holds at `now`.
    pub fn available(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.tokens.floor() as u64
    }

    /// When the bucket will hold `units` (capped at the burst), as seen at `now`.
    pub fn ready_at(&mut self, units: u64, now: Instant) -> Instant {
        self.refill(now);
        let units = (units as f64).min(f64::from(self.quota.burst));
        let missing = (units - self.tokens).max(0.0);
        now + Duration::from_secs_f64(missing / self.quota.per_second.max(f64::MIN_POSITIVE))
    }

    /// Spends `units` the caller saw [`Self::available`].
    pub fn spend(&mut self, units: u64) {
        self.tokens = (self.tokens - units as f64).max(0.0);
    }

    /// Whether the bucket is full (so forgetting it changes nothing).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= f64::from(self.quota.burst)
    }
}

/// The per-peer, per-protocol buckets. Entries exist only for peers that asked recently; the
/// event loop forgets a peer when its last connection closes, so the map is bounded by the
/// connected peers.
#[derive(Debug)]
pub struct RateLimiter {
    limits: RateLimits,
    buckets: HashMap<(PeerId, Protocol), TokenBucket>,
}

impl RateLimiter {
    /// Limits as configured.
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            limits,
            buckets: HashMap::new(),
        }
    }

    fn quota(&self, protocol: Protocol) -> Quota {
        match protocol {
            Protocol::Status => self.limits.status,
            Protocol::BlocksByRange => self.limits.blocks_by_range,
            Protocol::BlocksByRoot => self.limits.blocks_by_root,
        }
    }

    /// Whether `peer` may make a request of `cost` units on `protocol` now (and spends them).
    pub fn allow(&mut self, peer: PeerId, protocol: Protocol, cost: u64, now: Instant) -> bool {
        let quota = self.quota(protocol);
        self.buckets
            .entry((peer, protocol))
            .or_insert_with(|| TokenBucket::new(quota, now))
            .try_take(cost, now)
    }

    /// Forgets a disconnected peer's buckets, unless one is still depleted (a peer must not
    /// refill its bucket by reconnecting).
    pub fn forget(&mut self, peer: &PeerId, now: Instant) {
        self.buckets
            .retain(|(p, _), bucket| p != peer || !bucket.is_full(now));
    }

    /// Drops every full bucket (periodic housekeeping).
    pub fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
    }

    /// Number of buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spends_and_refills() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(Quota::new(10, 5.0), now);
        assert!(bucket.try_take(8, now));
        assert!(!bucket.try_take(3, now));
        assert!(bucket.try_take(3, now + Duration::from_millis(200)));
        // A cost above the burst costs the burst: possible once the bucket is full again.
        assert!(bucket.try_take(1000, now + Duration::from_secs(10)));
    }

    #[test]
    fn limiter_is_per_peer_and_protocol_and_survives_reconnect() {
        let now = Instant::now();
        let limits = RateLimits {
            blocks_by_range: Quota::new(10, 1.0),
            ..RateLimits::default()
        };
        let mut limiter = RateLimiter::new(limits);
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(limiter.allow(a, Protocol::BlocksByRange, 10, now));
        assert!(!limiter.allow(a, Protocol::BlocksByRange, 1, now));
        assert!(limiter.allow(b, Protocol::BlocksByRange, 10, now));
        assert!(limiter.allow(a, Protocol::BlocksByRoot, 10, now));
        limiter.forget(&a, now);
        assert!(!limiter.allow(a, Protocol::BlocksByRange, 1, now));
        limiter.prune(now + Duration::from_secs(60));
        assert!(limiter.is_empty());
    }
}
