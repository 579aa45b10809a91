//! Property tests of the validity rules: every kind of mutation a peer can make to a valid block
//! is refused, and refused under the rule it breaks (checked as the node checks: rules 3–5 alone,
//! then rules 1–2 against the parent, rule 6 against the clock).

use bytes::Bytes;
use proptest::prelude::*;

use crate::validity::{MAX_FUTURE_DRIFT_MS, check_link, check_not_future, check_standalone};
use crate::{Block, BlockHeader, ChainSpec, DevChain, Hash, MAX_PAYLOAD_BYTES, PublicKey, SigningKey};

/// One change to a valid block at height 3 of a two-authority dev chain.
#[derive(Debug, Clone)]
enum Mutation {
    /// A new height, keeping the old signature.
    Height(u64),
    /// A new parent hash, keeping or remaking the signature.
    ParentHash([u8; 32], bool),
    /// A timestamp shift, keeping or remaking the signature.
    Timestamp(i64, bool),
    /// A new payload without a new payload hash.
    Payload(Vec<u8>),
    /// A new payload and payload hash, keeping the old signature.
    PayloadAndHash(Vec<u8>),
    /// A payload `extra` bytes over the limit, hashed and signed.
    Oversized(usize),
    /// A proposer that is not scheduled: a random key, or dev key `i` signing for itself.
    Proposer([u8; 32]),
    SignedBy(u32),
    /// One flipped bit of the signature.
    SignatureBit(usize),
    /// Signed properly, but more than 15 s after `now`.
    FromTheFuture(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<u64>()
            .prop_filter("a different height", |h| *h != 3)
            .prop_map(Mutation::Height),
        (any::<[u8; 32]>(), any::<bool>()).prop_map(|(h, s)| Mutation::ParentHash(h, s)),
        (-5_000i64..5_000, any::<bool>())
            .prop_filter("a different time", |(d, _)| *d != 0)
            .prop_map(|(d, s)| Mutation::Timestamp(d, s)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::Payload),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Mutation::PayloadAndHash),
        (1usize..3).prop_map(Mutation::Oversized),
        any::<[u8; 32]>().prop_map(Mutation::Proposer),
        (0u32..8)
            .prop_filter("not the scheduled key", |i| *i != 1)
            .prop_map(Mutation::SignedBy),
        (0usize..512).prop_map(Mutation::SignatureBit),
        (1u64..1_000_000).prop_map(Mutation::FromTheFuture),
    ]
}

struct Setup {
    spec: ChainSpec,
    dev: DevChain,
    parent: Block,
    block: Block,
}

fn setup() -> Setup {
    let spec = ChainSpec::dev("prop", 2, 1_700_000_000_000, 1_000, 4).expect("spec");
    let dev = DevChain::new(&spec).expect("dev keys");
    let mut blocks = dev.extend(&spec.genesis().header, 3, 32);
    let block = blocks.pop().expect("block 3");
    let parent = blocks.pop().expect("block 2");
    Setup {
        spec,
        dev,
        parent,
        block,
    }
}

fn resign(dev: &DevChain, block: &mut Block) {
    block.signature = dev.key_at(block.header.height).sign(&block.hash());
}

/// Applies `m`; returns the rule `check_standalone` must name (`None`: passes) and the rule
/// `check_link` must name, and the clock for rule 6.
fn apply(s: &Setup, b: &mut Block, m: &Mutation) -> (Option<u8>, Option<u8>, u64) {
    let now = b.header.timestamp_ms;
    let scheduled = |h: u64| s.spec.authorities[(h % 2) as usize];
    match m {
        Mutation::Height(h) => {
            b.header.height = *h;
            let standalone = match *h {
                0 => 0,
                h if scheduled(h) != b.header.proposer => 4,
                _ => 5,
            };
            (Some(standalone), Some(1), now)
        }
        Mutation::ParentHash(h, sign) => {
            b.header.parent_hash = Hash(*h);
            if *sign {
                resign(&s.dev, b);
            }
            let link = (Hash(*h) != s.parent.hash()).then_some(1);
            (if *sign { None } else { Some(5) }, link, now)
        }
        Mutation::Timestamp(d, sign) => {
            b.header.timestamp_ms = b.header.timestamp_ms.wrapping_add_signed(*d);
            if *sign {
                resign(&s.dev, b);
            }
            let link = (b.header.timestamp_ms <= s.parent.header.timestamp_ms).then_some(2);
            (
                if *sign { None } else { Some(5) },
                link,
                now.max(b.header.timestamp_ms),
            )
        }
        Mutation::Payload(p) => {
            let changed = **p != *b.payload;
            b.payload = Bytes::from(p.clone());
            (changed.then_some(3), None, now)
        }
        Mutation::PayloadAndHash(p) => {
            let changed = **p != *b.payload;
            b.header.payload_hash = Hash::of(p);
            b.payload = Bytes::from(p.clone());
            (changed.then_some(5), None, now)
        }
        Mutation::Oversized(extra) => {
            let header = s
                .dev
                .header_after(&s.parent.header, &vec![7; MAX_PAYLOAD_BYTES + extra]);
            *b = s
                .dev
                .seal(header, Bytes::from(vec![7; MAX_PAYLOAD_BYTES + extra]));
            (Some(3), None, now)
        }
        Mutation::Proposer(k) => {
            b.header.proposer = PublicKey(*k);
            // The scheduled key itself changes nothing.
            ((PublicKey(*k) != scheduled(3)).then_some(4), None, now)
        }
        Mutation::SignedBy(i) => {
            let key = SigningKey::dev(*i);
            b.header.proposer = key.public_key();
            b.signature = key.sign(&b.hash());
            (Some(4), None, now)
        }
        Mutation::SignatureBit(bit) => {
            b.signature.0[bit / 8] ^= 1 << (bit % 8);
            (Some(5), None, now)
        }
        Mutation::FromTheFuture(ahead) => (None, None, now - MAX_FUTURE_DRIFT_MS - ahead),
    }
}

fn rule_of(r: Result<(), crate::BlockError>) -> Option<u8> {
    r.err().map(|e| e.rule())
}

proptest! {
    #[test]
    fn mutated_blocks_fail_with_the_rule_they_break(m in mutation()) {
        let s = setup();
        let mut b = s.block.clone();
        check_standalone(&b, &s.spec).expect("valid before");
        check_link(&b.header, &s.parent.header).expect("links before");
        let (standalone, link, now) = apply(&s, &mut b, &m);
        prop_assert_eq!(rule_of(check_standalone(&b, &s.spec)), standalone);
        prop_assert_eq!(rule_of(check_link(&b.header, &s.parent.header)), link);
        let future = b.header.timestamp_ms > now.saturating_add(MAX_FUTURE_DRIFT_MS);
        prop_assert_eq!(rule_of(check_not_future(&b.header, now)), future.then_some(6));
        prop_assert_eq!(future, matches!(m, Mutation::FromTheFuture(_)));
        // Refused somewhere, unless unchanged and not from the future, or properly re-signed with a
        // time still after its parent's (earlier or later than before: both are valid blocks).
        let refused = standalone.is_some() || link.is_some() || future;
        let still_valid = (b == s.block && !future)
            || (matches!(m, Mutation::Timestamp(_, true)) && b.header.timestamp_ms > s.parent.header.timestamp_ms);
        prop_assert_eq!(refused, !still_valid, "{:?} gave {:?}", m, b);
    }

    #[test]
    fn arbitrary_headers_link_only_to_their_parent(
        height in any::<u64>(),
        parent_height in any::<u64>(),
        timestamp in any::<u64>(),
        parent_timestamp in any::<u64>(),
        linked in any::<bool>(),
    ) {
        let parent = BlockHeader {
            height: parent_height,
            parent_hash: Hash::ZERO,
            timestamp_ms: parent_timestamp,
            payload_hash: Hash::of(b"p"),
            proposer: PublicKey([1; 32]),
        };
        let child = BlockHeader {
            height,
            parent_hash: if linked { parent.hash() } else { Hash::of(b"elsewhere") },
            timestamp_ms: timestamp,
            payload_hash: Hash::of(b"c"),
            proposer: PublicKey([2; 32]),
        };
        let expected = if parent_height.checked_add(1) != Some(height) || !linked {
            Some(1)
        } else if timestamp <= parent_timestamp {
            Some(2)
        } else {
            None
        };
        prop_assert_eq!(rule_of(check_link(&child, &parent)), expected);
    }
}
