//! The simulated chains: the true chain (growing during the run) and its forks, built once for
//! every seed, with the signatures the simulator's node accepts.

use super::*;

pub(super) struct Fixture {
    pub(super) spec: ChainSpec,
    pub(super) chain: Vec<Block>,
    /// A validly signed chain whose block 1 does not even link to genesis.
    pub(super) fork_a: Vec<Block>,
    /// A validly signed chain that leaves the true one at `FORK_B_AT`.
    pub(super) fork_b: Vec<Block>,
    /// A validly signed chain that leaves the true one at `FORK_C_AT` and ends at `FORK_C_END`.
    pub(super) fork_c: Vec<Block>,
    /// Signature of every validly signed block, by hash: verification without re-checking.
    pub(super) valid: HashMap<Hash, Signature>,
    /// Height of every block of the true chain and the forks, by hash (for root requests).
    pub(super) by_hash: HashMap<Hash, (u8, Height)>,
}

pub(super) fn extend(
    spec: &ChainSpec,
    keys: &[SigningKey],
    chain: &mut Vec<Block>,
    (salt, end): (&str, Height),
    bogus_parent: bool,
) {
    while (chain.len() as Height) <= end {
        let height = chain.len() as Height;
        let parent = match chain.last() {
            Some(_) if bogus_parent && height == 1 => Hash::of(b"not our genesis"),
            Some(b) => b.hash(),
            None => Hash::ZERO,
        };
        let payload = Bytes::from(format!("{salt}:{height}").into_bytes());
        let key = &keys[(height % u64::from(AUTHORITIES)) as usize];
        chain.push(Block::new_signed(
            height,
            parent,
            spec.slot_timestamp_ms(height),
            payload,
            key,
        ));
    }
}

pub(super) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let spec =
            ChainSpec::dev("sim", AUTHORITIES, 1_700_000_000_000, SLOT_MS, FINALITY_DEPTH).expect("spec");
        let keys: Vec<SigningKey> = (0..AUTHORITIES).map(SigningKey::dev).collect();
        let mut chain = vec![spec.genesis()];
        extend(&spec, &keys, &mut chain, ("true", LEN), false);
        let mut fork_a = vec![spec.genesis()];
        extend(&spec, &keys, &mut fork_a, ("fork-a", LEN), true);
        let mut fork_b = chain[..FORK_B_AT as usize].to_vec();
        extend(&spec, &keys, &mut fork_b, ("fork-b", LEN), false);
        let mut fork_c = chain[..=FORK_C_AT as usize].to_vec();
        extend(&spec, &keys, &mut fork_c, ("fork-c", FORK_C_END), false);
        let mut valid = HashMap::new();
        let mut by_hash = HashMap::new();
        for (tag, blocks) in [(0u8, &chain), (1, &fork_a), (2, &fork_b), (3, &fork_c)] {
            for b in blocks.iter() {
                valid.insert(b.hash(), b.signature);
                by_hash.entry(b.hash()).or_insert((tag, b.height()));
            }
        }
        Fixture {
            spec,
            chain,
            fork_a,
            fork_b,
            fork_c,
            valid,
            by_hash,
        }
    })
}
