//! A tiny deterministic random source (SplitMix64) for retry jitter and tie-breaks.
//!
//! Not for cryptography: it only spreads retries so that peers are not hit in lock-step, and it is
//! seeded by the caller so a simulator run is reproducible from its seed.

/// SplitMix64: a 64-bit state advanced by a constant and mixed on output.
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    state: u64,
}

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `delay_ms` stretched by a random factor in `[1, 1.5)`: never shorter than asked.
    pub(crate) fn stretch(&mut self, delay_ms: u64) -> u64 {
        let extra = self.next_u64() % (delay_ms / 2 + 1);
        delay_ms.saturating_add(extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_stretch_stays_in_bounds() {
        let (mut a, mut b) = (Jitter::new(7), Jitter::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
            let d = a.stretch(1_000);
            assert!((1_000..=1_500).contains(&d), "{d}");
            b.stretch(1_000);
        }
        assert_ne!(Jitter::new(1).next_u64(), Jitter::new(2).next_u64());
    }
}
