//! The network's own Prometheus metrics, under the prefix `syncnode_network`.
//!
//! libp2p's metrics (swarm, identify, kad, ping, gossipsub, bandwidth) are registered beside them
//! by the swarm builder under `libp2p_`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::rate_limit::Protocol;

/// Inbound (peers asked us) or outbound (we asked peers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    pub direction: Direction,
    pub protocol: &'static str,
    /// A response code (`ok`, `invalid_request`, ...) or a failure (`timeout`, `violation`, ...).
    pub code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// The protocols with request series.
const PROTOCOLS: [Protocol; 3] = [Protocol::Status, Protocol::BlocksByRange, Protocol::BlocksByRoot];

/// The kinds of protocol violation that peers are charged for (`protocol_violations`).
const VIOLATION_KINDS: [&str; 5] = [
    "bad_request_frame",
    "bad_response",
    "bad_status",
    "invalid_request",
    "undecodable_gossip",
];

/// The outcomes of a gossiped block that `gossip_blocks` counts.
const GOSSIP_OUTCOMES: [&str; 3] = ["received", "dropped", "undecodable"];

type HistogramFamily = Family<ProtocolLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 5 ms .. ~20 s
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The network's metrics.
#[derive(Clone)]
pub struct NetworkMetrics {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: HistogramFamily,
    rate_limited: Family<ProtocolLabels, Counter>,
    violations: Family<KindLabels, Counter>,
    peers: Family<StateLabels, Gauge>,
    score_min: Gauge<f64, AtomicU64>,
    score_max: Gauge<f64, AtomicU64>,
    bans: Counter,
    pruned: Counter,
    blocks_served: Counter,
    serving_bytes: Gauge,
    serving_bytes_peak: Gauge,
    gossip: Family<KindLabels, Counter>,
}

impl NetworkMetrics {
    /// Creates the metrics and registers them in `registry` under `syncnode_network`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = NetworkMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            rate_limited: Family::default(),
            violations: Family::default(),
            peers: Family::default(),
            score_min: Gauge::default(),
            score_max: Gauge::default(),
            bans: Counter::default(),
            pruned: Counter::default(),
            blocks_served: Counter::default(),
            serving_bytes: Gauge::default(),
            serving_bytes_peak: Gauge::default(),
            gossip: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("syncnode_network");
        r.register(
            "requests",
            "Requests by direction and protocol",
            m.requests.clone(),
        );
        r.register(
            "responses",
            "Responses by direction, protocol and code or failure",
            m.responses.clone(),
        );
        r.register(
            "request_latency_seconds",
            "Latency of outbound requests by protocol",
            m.latency.clone(),
        );
        r.register(
            "rate_limited",
            "Inbound requests refused by the rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "protocol_violations",
            "Peer protocol violations by kind",
            m.violations.clone(),
        );
        r.register("peers", "Peers by state", m.peers.clone());
        r.register("score_min", "Lowest peer score", m.score_min.clone());
        r.register("score_max", "Highest peer score", m.score_max.clone());
        r.register("bans", "Peers banned", m.bans.clone());
        r.register(
            "pruned_peers",
            "Peers disconnected because the node had more than max_peers",
            m.pruned.clone(),
        );
        r.register("blocks_served", "Blocks sent to peers", m.blocks_served.clone());
        r.register(
            "serving_bytes_held",
            "Bytes of blocks read for responses and not yet written",
            m.serving_bytes.clone(),
        );
        r.register(
            "serving_bytes_held_peak",
            "Most bytes of blocks read for responses and not yet written at once",
            m.serving_bytes_peak.clone(),
        );
        r.register(
            "gossip_blocks",
            "Gossiped blocks received, by outcome",
            m.gossip.clone(),
        );
        m.create_known_series();
        m
    }

    /// Creates every series whose labels are known in advance, at zero, so that `/metrics`
    /// shows them from the start rather than after their first event.
    fn create_known_series(&self) {
        for protocol in PROTOCOLS.map(Protocol::label) {
            for direction in [Direction::Inbound, Direction::Outbound] {
                self.requests
                    .get_or_create(&RequestLabels { direction, protocol })
                    .inc_by(0);
                let code = "ok";
                self.responses
                    .get_or_create(&ResponseLabels {
                        direction,
                        protocol,
                        code,
                    })
                    .inc_by(0);
            }
            // A histogram series appears when created; the guard is released at once.
            let _ = self.latency.get_or_create(&ProtocolLabels { protocol });
            self.rate_limited
                .get_or_create(&ProtocolLabels { protocol })
                .inc_by(0);
        }
        self.set_peers(0, 0);
        for kind in GOSSIP_OUTCOMES {
            self.gossip.get_or_create(&KindLabels { kind }).inc_by(0);
        }
        for kind in VIOLATION_KINDS {
            self.violations.get_or_create(&KindLabels { kind }).inc_by(0);
        }
    }

    pub fn request(&self, direction: Direction, protocol: Protocol) {
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                protocol: protocol.label(),
            })
            .inc();
    }

    pub fn response(&self, direction: Direction, protocol: Protocol, code: &'static str) {
        self.responses
            .get_or_create(&ResponseLabels {
                direction,
                protocol: protocol.label(),
                code,
            })
            .inc();
    }

    pub fn latency(&self, protocol: Protocol, seconds: f64) {
        self.latency
            .get_or_create(&ProtocolLabels {
                protocol: protocol.label(),
            })
            .observe(seconds);
    }

    pub fn rate_limited(&self, protocol: Protocol) {
        self.rate_limited
            .get_or_create(&ProtocolLabels {
                protocol: protocol.label(),
            })
            .inc();
    }

    pub fn violation(&self, kind: &'static str) {
        self.violations.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn set_peers(&self, connected: usize, banned: usize) {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.peers
            .get_or_create(&StateLabels { state: "connected" })
            .set(as_i64(connected));
        self.peers
            .get_or_create(&StateLabels { state: "banned" })
            .set(as_i64(banned));
    }

    pub fn set_score_range(&self, min: f64, max: f64) {
        self.score_min.set(min);
        self.score_max.set(max);
    }

    pub fn ban(&self) {
        self.bans.inc();
    }

    pub fn pruned(&self) {
        self.pruned.inc();
    }

    pub fn blocks_served(&self, n: usize) {
        self.blocks_served.inc_by(n as u64);
    }

    /// The serving byte budget's use now and its peak.
    pub fn set_serving_bytes(&self, held: usize, peak: usize) {
        self.serving_bytes.set(i64::try_from(held).unwrap_or(i64::MAX));
        self.serving_bytes_peak
            .set(i64::try_from(peak).unwrap_or(i64::MAX));
    }

    pub fn gossip(&self, kind: &'static str) {
        self.gossip.get_or_create(&KindLabels { kind }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_series_is_shown_at_zero_before_any_event() {
        let mut registry = Registry::default();
        let _metrics = NetworkMetrics::register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            r#"syncnode_network_requests_total{direction="Inbound",protocol="blocks_by_range"} 0"#,
            r#"syncnode_network_responses_total{direction="Outbound",protocol="status",code="ok"} 0"#,
            r#"syncnode_network_request_latency_seconds_count{protocol="blocks_by_root"} 0"#,
            r#"syncnode_network_rate_limited_total{protocol="blocks_by_range"} 0"#,
            r#"syncnode_network_peers{state="connected"} 0"#,
            r#"syncnode_network_peers{state="banned"} 0"#,
            r#"syncnode_network_gossip_blocks_total{kind="received"} 0"#,
            r#"syncnode_network_gossip_blocks_total{kind="dropped"} 0"#,
            r#"syncnode_network_protocol_violations_total{kind="bad_response"} 0"#,
            "syncnode_network_bans_total 0",
            "syncnode_network_pruned_peers_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
    }
}
