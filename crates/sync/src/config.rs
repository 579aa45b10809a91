//! The engine's tunable numbers, with defaults chosen for the protocol's limits.

use syncnode_proto::MAX_RANGE_COUNT;
use syncnode_types::{HEADER_BYTES_LEN, Height, MAX_PAYLOAD_BYTES, Signature};

/// Bytes of the largest valid block: a window must hold at least one so import can always progress.
pub const MIN_WINDOW_BYTES: usize = MAX_PAYLOAD_BYTES + HEADER_BYTES_LEN + Signature::LEN;

/// Everything the engine can be tuned by. [`SyncConfig::default`] suits a real network;
/// tests shrink the batch size and the timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Blocks per forward range request (1..=1024).
    pub batch_size: u64,
    /// Most forward batches that exist at once (downloading, downloaded or importing).
    pub window_batches: usize,
    /// Most bytes of forward blocks held between download and confirmed import.
    pub window_bytes: usize,
    /// Blocks per backfill range request (1..=1024).
    pub backfill_batch_size: u64,
    /// Most backfill batches that exist at once.
    pub backfill_window_batches: usize,
    /// Most bytes of backfill blocks held between download and confirmed import.
    pub backfill_window_bytes: usize,
    /// Most requests of ours one peer serves at once (each on its own stream). Below the
    /// default per-requester serving limit of the network (`max_serving_per_peer`, 8), so a
    /// peer of our own kind never refuses them for being too many.
    pub max_requests_per_peer: usize,
    /// Deadline of a first request to a peer whose link is not measured yet; each retry of the
    /// same batch doubles it. A measured peer's deadline follows its link (see `pace.rs`), never
    /// longer than this.
    pub request_timeout_ms: u64,
    /// Ceiling of the growing deadline.
    pub max_request_timeout_ms: u64,
    /// Least wait before a failed batch is requested again, from any peer.
    pub retry_min_delay_ms: u64,
    /// Ceiling of the exponential backoff (before jitter).
    pub retry_max_delay_ms: u64,
    /// Failures of one batch a single peer may cause before the batch stops asking it.
    pub max_attempts_per_peer: u32,
    /// Without delivered or imported blocks for this long while behind, the state is `Stalled`.
    pub stall_after_ms: u64,
    /// A peer's Status older than this is refreshed (`RequestStatus`) before it gets more work.
    pub status_stale_ms: u64,
    /// Most parent lookups (gossiped blocks with unknown parents) tracked at once.
    pub max_lookups: usize,
    /// Most ancestors one lookup fetches by root before giving up (range sync takes over).
    pub max_lookup_depth: u64,
    /// Most requests one lookup sends before it gives up.
    pub max_lookup_attempts: u32,
    /// Most peers tracked; Status from further peers is ignored until one leaves.
    pub max_peers: usize,
    /// Wait before an import that failed for a local reason is offered again.
    pub local_retry_ms: u64,
    /// Until a peer's Status arrives the state is `Syncing` (our head is unchecked, so a producer
    /// does not build on it), for at most this long after start: a node that finds no peer by
    /// then counts as synced on its own (a one-node network).
    pub alone_after_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            batch_size: 512,
            // 8 peers 100 ms away each hold two requests while batches wait for import: 16
            // left their links idle (src/tests/pacing.rs, docs/lab.md).
            window_batches: 32,
            window_bytes: 64 * 1024 * 1024,
            backfill_batch_size: 512,
            backfill_window_batches: 4,
            backfill_window_bytes: 32 * 1024 * 1024,
            max_requests_per_peer: 4,
            request_timeout_ms: 10_000,
            max_request_timeout_ms: 60_000,
            retry_min_delay_ms: 500,
            retry_max_delay_ms: 30_000,
            max_attempts_per_peer: 3,
            stall_after_ms: 60_000,
            status_stale_ms: 90_000,
            max_lookups: 16,
            max_lookup_depth: 64,
            max_lookup_attempts: 8,
            max_peers: 1024,
            local_retry_ms: 1_000,
            alone_after_ms: 5_000,
        }
    }
}

/// A configuration the engine cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be between 1 and {MAX_RANGE_COUNT}, got {got}")]
    BatchSize { field: &'static str, got: Height },
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("{field} ({got} bytes) must hold at least one largest block of {MIN_WINDOW_BYTES} bytes")]
    WindowTooSmall { field: &'static str, got: usize },
}

impl SyncConfig {
    /// Checks the numbers the engine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, got) in [
            ("batch_size", self.batch_size),
            ("backfill_batch_size", self.backfill_batch_size),
        ] {
            if !(1..=MAX_RANGE_COUNT).contains(&got) {
                return Err(ConfigError::BatchSize { field, got });
            }
        }
        for (field, got) in [
            ("window_batches", self.window_batches as u64),
            ("backfill_window_batches", self.backfill_window_batches as u64),
            ("max_requests_per_peer", self.max_requests_per_peer as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_min_delay_ms", self.retry_min_delay_ms),
            ("max_attempts_per_peer", u64::from(self.max_attempts_per_peer)),
            ("max_lookups", self.max_lookups as u64),
            ("max_lookup_depth", self.max_lookup_depth),
            ("max_peers", self.max_peers as u64),
        ] {
            if got == 0 {
                return Err(ConfigError::Zero { field });
            }
        }
        for (field, got) in [
            ("window_bytes", self.window_bytes),
            ("backfill_window_bytes", self.backfill_window_bytes),
        ] {
            if got < MIN_WINDOW_BYTES {
                return Err(ConfigError::WindowTooSmall { field, got });
            }
        }
        Ok(())
    }

    /// Deadline of a request for a batch that already failed `failures` times.
    pub(crate) fn timeout_for(&self, failures: u32) -> u64 {
        let grown = self.request_timeout_ms.saturating_mul(1u64 << failures.min(16));
        grown.min(self.max_request_timeout_ms.max(self.request_timeout_ms))
    }

    /// How long a peer whose request timed out is passed over while other peers serve the range:
    /// three request timeouts, so a silent peer gets about one request in that time, not one per
    /// batch.
    pub(crate) fn slow_peer_rest_ms(&self) -> u64 {
        self.request_timeout_ms.saturating_mul(3)
    }

    /// Backoff before retrying a batch that failed `failures` (>= 1) times, before jitter.
    pub(crate) fn backoff_for(&self, failures: u32) -> u64 {
        let exp = failures.saturating_sub(1).min(16);
        let grown = self.retry_min_delay_ms.saturating_mul(1u64 << exp);
        grown.min(self.retry_max_delay_ms.max(self.retry_min_delay_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_timers_grow_to_their_ceilings() {
        let c = SyncConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.timeout_for(0), 10_000);
        assert_eq!(c.timeout_for(1), 20_000);
        assert_eq!(c.timeout_for(30), 60_000);
        assert_eq!(c.backoff_for(1), 500);
        assert_eq!(c.backoff_for(2), 1_000);
        assert_eq!(c.backoff_for(40), 30_000);
    }

    #[test]
    fn bad_numbers_are_refused() {
        let c = SyncConfig {
            batch_size: 2000,
            ..SyncConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::BatchSize { .. })));
        let c = SyncConfig {
            window_bytes: 1024,
            ..SyncConfig::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::WindowTooSmall { .. })));
    }
}
