//! What the engine measured of each peer's link: its round trip and its throughput, as EWMAs,
//! and what follows from them: how many bytes of requests it may hold at once (its
//! bandwidth-delay product), how many blocks its next request asks for, and how long that
//! request may take before it is late.
//!
//! # Samples
//! Every answer with blocks is a sample, timed from the request's send to its arrival (the
//! node's [`crate::SyncEngine::response_received`], or the response itself when that was not
//! called):
//! - an answer to a request sent while the peer held no other request of ours took one round
//!   trip plus its transfer: `elapsed - bytes / throughput` (once a throughput is known; until
//!   then the whole `elapsed`, which the small first request keeps close to a round trip) is a
//!   round-trip sample;
//! - an answer's bytes over the time its link was busy with it (from the later of its send and
//!   the peer's previous answer: requests held at once share the link, so each counts from where
//!   the one before it finished) is a throughput sample.
//!
//! A request that ran out its deadline halves the throughput estimate (a slow honest link gets a
//! longer deadline next time, instead of the same deadline it missed).

use std::time::Duration;

/// Weight of a new sample in an EWMA.
const ALPHA: f64 = 0.25;
/// Blocks a peer's first request asks for, until its throughput is measured.
pub(crate) const FIRST_REQUEST_BLOCKS: u64 = 64;
/// A peer's requests ask for about this much of its link's time each.
const REQUEST_SPAN: Duration = Duration::from_millis(500);
/// Bytes a peer may hold in requests at once, in round trips of its throughput (besides the
/// two requests every measured peer may hold). Four, not one: each request costs round trips of
/// its own before its first block (its stream's negotiation) and its answer streams through a
/// muxer window of its own, so a link 100 ms away is kept busy only by several answers at once.
const FLIGHT_ROUND_TRIPS: f64 = 4.0;
/// A request is late after this many times its expected time.
const DEADLINE_MARGIN: f64 = 3.0;
/// Least deadline of a request to a measured peer: scheduling jitter on a loaded machine, a
/// server that paces, are not a slow link.
pub(crate) const MIN_DEADLINE_MS: u64 = 1_500;

/// The link estimates of one peer.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Pace {
    /// Round trip, in milliseconds.
    rtt_ms: Option<f64>,
    /// Throughput of its answers, in bytes per millisecond.
    bytes_per_ms: Option<f64>,
    /// When its last answer arrived.
    last_answer_ms: Option<u64>,
}

/// One answer with blocks, as the engine saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub sent_ms: u64,
    pub arrived_ms: u64,
    pub bytes: u64,
    /// The request was sent while the peer held no other request of ours.
    pub alone: bool,
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |o| o + ALPHA * (sample - o))
}

impl Pace {
    /// The round-trip estimate in milliseconds, if measured.
    pub(crate) fn rtt_ms(&self) -> Option<f64> {
        self.rtt_ms
    }

    /// The throughput estimate in bytes per millisecond, if measured.
    pub(crate) fn bytes_per_ms(&self) -> Option<f64> {
        self.bytes_per_ms
    }

    /// Takes in an answer (see the module). Each part of an answer sent alone (round trip,
    /// transfer) is taken as at least a quarter of its time, so one estimate still off (the
    /// other's first samples) cannot drive the other to nothing.
    pub(crate) fn answered(&mut self, sample: Sample) {
        let elapsed = sample.arrived_ms.saturating_sub(sample.sent_ms).max(1) as f64;
        let least = elapsed / 4.0;
        let rtt_before = self.rtt_ms;
        if sample.alone {
            let transfer = self.bytes_per_ms.map_or(0.0, |bw| sample.bytes as f64 / bw);
            self.rtt_ms = Some(ewma(self.rtt_ms, (elapsed - transfer).max(least)));
        }
        let busy = match self.last_answer_ms {
            Some(last) if last > sample.sent_ms => sample.arrived_ms.saturating_sub(last) as f64,
            _ => elapsed - rtt_before.unwrap_or(0.0),
        };
        if sample.bytes > 0 {
            let sample_bw = sample.bytes as f64 / busy.max(least).max(1.0);
            self.bytes_per_ms = Some(ewma(self.bytes_per_ms, sample_bw));
        }
        self.last_answer_ms = Some(
            self.last_answer_ms
                .map_or(sample.arrived_ms, |t| t.max(sample.arrived_ms)),
        );
    }

    /// A request ran out its deadline: the link is slower than believed.
    pub(crate) fn timed_out(&mut self) {
        if let Some(bw) = self.bytes_per_ms.as_mut() {
            *bw /= 2.0;
        }
    }

    /// Blocks of about `block_bytes` each its next request asks for, between
    /// [`FIRST_REQUEST_BLOCKS`] and `most`.
    pub(crate) fn request_blocks(&self, block_bytes: u64, most: u64) -> u64 {
        let Some(bw) = self.bytes_per_ms else {
            return FIRST_REQUEST_BLOCKS.min(most);
        };
        let span = bw * REQUEST_SPAN.as_millis() as f64;
        let blocks = (span / block_bytes.max(1) as f64) as u64;
        blocks.clamp(FIRST_REQUEST_BLOCKS.min(most), most)
    }

    /// Bytes of requests it may hold at once: its bandwidth-delay product (see
    /// [`FLIGHT_ROUND_TRIPS`]), `None` until measured (it then holds one request).
    pub(crate) fn flight_bytes(&self) -> Option<u64> {
        let (bw, rtt) = (self.bytes_per_ms?, self.rtt_ms?);
        Some((bw * rtt * FLIGHT_ROUND_TRIPS) as u64)
    }

    /// Milliseconds its link is expected to take to answer `bytes`: a round trip and their
    /// transfer. `None` until measured.
    pub(crate) fn expected_ms(&self, bytes: u64) -> Option<f64> {
        let (bw, rtt) = (self.bytes_per_ms?, self.rtt_ms?);
        Some(rtt + bytes as f64 / bw.max(f64::MIN_POSITIVE))
    }

    /// Deadline of a request for `bytes` sent while `ahead` bytes of its earlier requests are
    /// still to come: the margin over a round trip and the transfer of both, between
    /// [`MIN_DEADLINE_MS`] and `most`. `None` until the peer is measured.
    pub(crate) fn deadline_ms(&self, bytes: u64, ahead: u64, most: u64) -> Option<u64> {
        let (bw, rtt) = (self.bytes_per_ms?, self.rtt_ms?);
        let expected = rtt + (bytes.saturating_add(ahead)) as f64 / bw.max(f64::MIN_POSITIVE);
        let ms = (expected * DEADLINE_MARGIN).min(most as f64) as u64;
        Some(ms.clamp(MIN_DEADLINE_MS.min(most), most))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(sent_ms: u64, arrived_ms: u64, bytes: u64, alone: bool) -> Sample {
        Sample {
            sent_ms,
            arrived_ms,
            bytes,
            alone,
        }
    }

    #[test]
    fn a_small_first_answer_measures_the_round_trip() {
        let mut pace = Pace::default();
        assert_eq!(pace.request_blocks(1024, 512), FIRST_REQUEST_BLOCKS);
        assert_eq!(pace.deadline_ms(1024, 0, 10_000), None);
        pace.answered(sample(0, 100, 1_000, true));
        assert_eq!(pace.rtt_ms(), Some(100.0));
        assert!(pace.bytes_per_ms().is_some());
    }

    #[test]
    fn pipelined_answers_measure_the_link_rate() {
        // 100 ms round trip, 2,500 bytes/ms (20 Mbit/s): answers of 250 KB back to back.
        let mut pace = Pace::default();
        pace.answered(sample(0, 100, 1_000, true));
        let mut t = 100;
        for _ in 0..40 {
            let sent = t - 50;
            t += 100;
            pace.answered(sample(sent, t, 250_000, false));
        }
        let bw = pace.bytes_per_ms().unwrap_or(0.0);
        assert!((2_300.0..=2_700.0).contains(&bw), "throughput {bw}");
        let flight = pace.flight_bytes().unwrap_or(0);
        assert!((800_000..=1_200_000).contains(&flight), "flight {flight}");
        // Asks for about half a second of its link: ~1,200 blocks of 1 KiB, capped at 512.
        assert_eq!(pace.request_blocks(1024, 512), 512);
        assert!(pace.request_blocks(10_240, 512) >= 100);
    }

    #[test]
    fn the_deadline_follows_the_link_and_a_timeout_lengthens_it() {
        let mut pace = Pace::default();
        // A slow link: 100 bytes/ms, 200 ms round trip.
        pace.answered(sample(0, 200, 100, true));
        for i in 0..30 {
            let start = 1_000 + i * 10_000;
            pace.answered(sample(start, start + 200 + 1_000, 100_000, true));
        }
        let rtt = pace.rtt_ms().unwrap_or(0.0);
        assert!((150.0..=300.0).contains(&rtt), "rtt {rtt}");
        // 500 KB at ~100 bytes/ms: ~5 s expected, 15 s with the margin, capped at 60 s.
        let deadline = pace.deadline_ms(500_000, 0, 60_000).unwrap_or(0);
        assert!((10_000..=20_000).contains(&deadline), "deadline {deadline}");
        assert_eq!(pace.deadline_ms(500_000, 0, 8_000), Some(8_000));
        // A small request to it is late fast, but never before the floor.
        assert_eq!(pace.deadline_ms(100, 0, 60_000), Some(MIN_DEADLINE_MS));
        pace.timed_out();
        let longer = pace.deadline_ms(500_000, 0, 60_000).unwrap_or(0);
        assert!(longer > deadline, "{longer} <= {deadline}");
    }
}
