//! The node's own Prometheus metrics (the network registers its own and libp2p's beside them).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use syncnode_proto::Status;
use syncnode_sync::{EngineStats, SyncState};

/// Gauges and counters of the chain, the engine and the pipeline.
#[derive(Clone)]
pub struct NodeMetrics {
    pub head_height: Gauge,
    pub finalized_height: Gauge,
    pub earliest_height: Gauge,
    pub target_height: Gauge,
    pub sync_state: Gauge,
    pub blocks_imported: Counter,
    pub blocks_backfilled: Counter,
    pub blocks_downloaded: Counter,
    pub bytes_downloaded: Counter,
    pub batches_in_flight: Gauge,
    pub window_blocks: Gauge,
    pub window_bytes: Gauge,
    pub verify_seconds: Histogram,
    pub import_seconds: Histogram,
    pub invalid_responses: Counter,
    pub produced_blocks: Counter,
    pub range_requests_below_earliest: Counter,
}

impl NodeMetrics {
    /// Registers the metrics under the `syncnode` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = NodeMetrics {
            head_height: Gauge::default(),
            finalized_height: Gauge::default(),
            earliest_height: Gauge::default(),
            target_height: Gauge::default(),
            sync_state: Gauge::default(),
            blocks_imported: Counter::default(),
            blocks_backfilled: Counter::default(),
            blocks_downloaded: Counter::default(),
            bytes_downloaded: Counter::default(),
            batches_in_flight: Gauge::default(),
            window_blocks: Gauge::default(),
            window_bytes: Gauge::default(),
            verify_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            import_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            invalid_responses: Counter::default(),
            produced_blocks: Counter::default(),
            range_requests_below_earliest: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("syncnode");
        m.register_chain(r);
        m.register_flow(r);
        m.register_work(r);
        m
    }

    /// The chain's pointers and the engine's target and state.
    fn register_chain(&self, r: &mut Registry) {
        r.register(
            "head_height",
            "Height of the canonical head",
            self.head_height.clone(),
        );
        r.register(
            "finalized_height",
            "Height of the finalized block",
            self.finalized_height.clone(),
        );
        r.register(
            "earliest_height",
            "Lowest height served as an unbroken range",
            self.earliest_height.clone(),
        );
        r.register(
            "target_height",
            "Highest head a peer credibly claims",
            self.target_height.clone(),
        );
        r.register(
            "sync_state",
            "0 synced, 1 syncing, 2 backfilling, 3 stalled",
            self.sync_state.clone(),
        );
    }

    /// Blocks and bytes moving through download, the window and import.
    fn register_flow(&self, r: &mut Registry) {
        r.register(
            "blocks_imported",
            "Blocks imported forward",
            self.blocks_imported.clone(),
        );
        r.register(
            "blocks_backfilled",
            "Blocks imported by backfill",
            self.blocks_backfilled.clone(),
        );
        r.register(
            "blocks_downloaded",
            "Blocks received in range and root responses",
            self.blocks_downloaded.clone(),
        );
        r.register(
            "bytes_downloaded",
            "Payload bytes received in responses",
            self.bytes_downloaded.clone(),
        );
        r.register(
            "batches_in_flight",
            "Requests of the sync engine in flight",
            self.batches_in_flight.clone(),
        );
        r.register(
            "window_blocks",
            "Downloaded blocks waiting for import",
            self.window_blocks.clone(),
        );
        r.register(
            "window_bytes",
            "Bytes of downloaded blocks waiting for import",
            self.window_bytes.clone(),
        );
    }

    /// Time spent and the outcomes of verification, production and serving.
    fn register_work(&self, r: &mut Registry) {
        r.register(
            "verify_seconds",
            "Time to verify rules 3-5 of one response",
            self.verify_seconds.clone(),
        );
        r.register(
            "import_seconds",
            "Time of one import commit",
            self.import_seconds.clone(),
        );
        r.register(
            "invalid_responses",
            "Responses that failed verification",
            self.invalid_responses.clone(),
        );
        r.register(
            "produced_blocks",
            "Blocks this node produced",
            self.produced_blocks.clone(),
        );
        r.register(
            "range_requests_below_earliest",
            "Range requests served empty because they start below the earliest height held",
            self.range_requests_below_earliest.clone(),
        );
    }

    /// Mirrors the chain's pointers.
    pub fn observe_chain(&self, s: &Status) {
        self.head_height.set(s.head_height as i64);
        self.finalized_height.set(s.finalized_height as i64);
        self.earliest_height.set(s.earliest_height as i64);
    }

    /// Mirrors the engine.
    pub fn observe_engine(&self, stats: &EngineStats, state: SyncState, target: u64) {
        self.batches_in_flight.set(stats.in_flight_requests as i64);
        self.window_blocks
            .set((stats.buffered_blocks + stats.backfill_buffered_blocks) as i64);
        self.window_bytes
            .set((stats.buffered_bytes + stats.backfill_buffered_bytes) as i64);
        self.target_height.set(target as i64);
        self.sync_state.set(match state {
            SyncState::Synced => 0,
            SyncState::Syncing => 1,
            SyncState::Backfilling => 2,
            SyncState::Stalled => 3,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_once_under_the_prefix() {
        let mut registry = Registry::default();
        let _m = NodeMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        let types: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(types.len(), 17, "{text}");
        for name in [
            "syncnode_head_height gauge",
            "syncnode_blocks_imported counter",
            "syncnode_window_bytes gauge",
            "syncnode_verify_seconds histogram",
            "syncnode_range_requests_below_earliest counter",
        ] {
            assert!(types.contains(&name), "no `{name}` in {types:?}");
        }
        assert!(
            text.contains("syncnode_range_requests_below_earliest_total 0"),
            "{text}"
        );
    }
}
