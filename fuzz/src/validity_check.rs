//! The validity target: valid blocks of dev-key chains put through arbitrary mutations (or
//! replaced by arbitrary headers and blocks), then judged by the rules of PROTOCOL.md section 1
//! and by an independent oracle that knows which signatures were ever made.
//!
//! Input (structure-aware, through `arbitrary::Unstructured`): the chain (the vector chain or a dev
//! chain of 1, 3 or 4 authorities), the parent height, the child's payload, up to eight mutations,
//! the clock for rule 6, and where the child sits in a batch of valid blocks.
//!
//! Invariants checked: `check_standalone` (rules 3–5, genesis), `check_link` (rules 1–2) and
//! `check_not_future` (rule 6) return exactly the error the oracle expects, in rule order, and
//! `BlockError::rule` names that rule; `check_signature` agrees with the oracle for every known key;
//! `verify_standalone_batch` names the same first bad block and error as checking one by one.

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;
use syncnode_types::validity::{
    MAX_FUTURE_DRIFT_MS, check_link, check_not_future, check_signature, check_standalone,
    verify_standalone_batch,
};
use syncnode_types::{
    Block, BlockError, BlockHeader, ChainSpec, DevChain, Hash, MAX_PAYLOAD_BYTES, PublicKey, Signature,
    SigningKey,
};

/// Dev keys the mutations may sign with: every authority of every chain below, and one outsider.
const KEYS: u32 = 5;
/// Valid blocks built ahead on each chain (heights 1..=CHAIN_LEN).
const CHAIN_LEN: u64 = 4;

struct Chain {
    dev: DevChain,
    blocks: Vec<Block>,
}

fn chains() -> &'static [Chain] {
    static CHAINS: OnceLock<Vec<Chain>> = OnceLock::new();
    CHAINS.get_or_init(|| {
        let vector = include_str!("../../testdata/vectors/chain_spec.json");
        let specs = [
            ChainSpec::from_json(vector),
            ChainSpec::dev("fuzz-1", 1, 1_700_000_000_000, 1_000, 8),
            ChainSpec::dev("fuzz-3", 3, 0, 1, 1),
            ChainSpec::dev("fuzz-4", 4, u64::MAX - 10, 2, 3),
        ];
        specs
            .into_iter()
            .map(|spec| {
                let dev = DevChain::new(&spec.expect("fuzz chain spec")).expect("dev-key authorities");
                let genesis = dev.spec().genesis();
                let mut blocks = vec![genesis.clone()];
                blocks.extend(dev.extend(&genesis.header, CHAIN_LEN, 16));
                Chain { dev, blocks }
            })
            .collect()
    })
}

fn keys() -> &'static [SigningKey] {
    static KEYS_: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS_.get_or_init(|| (0..KEYS).map(SigningKey::dev).collect())
}

/// One change to a block, as a peer might make it.
#[derive(Debug, Arbitrary)]
enum Mutation {
    Height(u64),
    HeightDelta(i8),
    ParentHash([u8; 32]),
    ParentHashOfChainBlock(u8),
    Timestamp(u64),
    TimestampDelta(i16),
    Payload(Vec<u8>),
    PayloadKeepingHash(Vec<u8>),
    Oversized(u16),
    PayloadHash([u8; 32]),
    Proposer([u8; 32]),
    ProposerKey(u8),
    SignatureBit(u16),
    Signature([u8; 32], [u8; 32]),
    SignWith(u8),
    SignAsScheduled,
    Genesis,
}

/// The chain a block is judged on, its mutations and the oracle of the rules.
struct Work<'a> {
    chain: &'a Chain,
}

impl Work<'_> {
    fn sign(&mut self, block: &mut Block, key: &SigningKey) {
        block.header.proposer = key.public_key();
        block.signature = key.sign(&block.hash());
    }

    fn apply(&mut self, block: &mut Block, m: Mutation) {
        let h = &mut block.header;
        match m {
            Mutation::Height(v) => h.height = v,
            Mutation::HeightDelta(d) => h.height = h.height.wrapping_add_signed(i64::from(d)),
            Mutation::ParentHash(v) => h.parent_hash = Hash(v),
            Mutation::ParentHashOfChainBlock(i) => {
                let blocks = &self.chain.blocks;
                h.parent_hash = blocks[usize::from(i) % blocks.len()].hash();
            }
            Mutation::Timestamp(v) => h.timestamp_ms = v,
            Mutation::TimestampDelta(d) => h.timestamp_ms = h.timestamp_ms.wrapping_add_signed(i64::from(d)),
            Mutation::Payload(p) => {
                h.payload_hash = Hash::of(&p);
                block.payload = Bytes::from(p);
            }
            Mutation::PayloadKeepingHash(p) => block.payload = Bytes::from(p),
            Mutation::Oversized(extra) => {
                let p = vec![0u8; MAX_PAYLOAD_BYTES - 2 + usize::from(extra % 4)];
                h.payload_hash = Hash::of(&p);
                block.payload = Bytes::from(p);
            }
            Mutation::PayloadHash(v) => h.payload_hash = Hash(v),
            Mutation::Proposer(v) => h.proposer = PublicKey(v),
            Mutation::ProposerKey(i) => h.proposer = keys()[usize::from(i) % keys().len()].public_key(),
            Mutation::SignatureBit(bit) => block.signature.0[usize::from(bit / 8) % 64] ^= 1 << (bit % 8),
            Mutation::Signature(r, s) => {
                block.signature.0[..32].copy_from_slice(&r);
                block.signature.0[32..].copy_from_slice(&s);
            }
            Mutation::SignWith(i) => self.sign(block, &keys()[usize::from(i) % keys().len()]),
            Mutation::SignAsScheduled => {
                let key = self.chain.dev.key_at(block.header.height).clone();
                self.sign(block, &key);
            }
            Mutation::Genesis => *block = self.chain.blocks[0].clone(),
        }
    }

    /// Rules 3–5 (or genesis), in the order the rules are numbered, without the code under test.
    fn expected_standalone(&self, block: &Block) -> std::result::Result<(), BlockError> {
        let spec = self.chain.dev.spec();
        if block.header.height == 0 {
            let genesis = &self.chain.blocks[0];
            return match block == genesis {
                true => Ok(()),
                false => Err(BlockError::NotGenesis {
                    got: block.hash(),
                    expected: genesis.hash(),
                }),
            };
        }
        if block.payload.len() > MAX_PAYLOAD_BYTES {
            return Err(BlockError::PayloadTooLarge {
                len: block.payload.len(),
            });
        }
        if Hash::of(&block.payload) != block.header.payload_hash {
            return Err(BlockError::PayloadHashMismatch);
        }
        let n = spec.authorities.len() as u64;
        let scheduled = spec.authorities[(block.header.height % n) as usize];
        if block.header.proposer != scheduled {
            return Err(BlockError::WrongProposer {
                got: block.header.proposer,
                expected: scheduled,
            });
        }
        self.expected_signature(block)
    }

    /// Ed25519 signing is deterministic (RFC 8032) and ZIP-215 accepts only canonical `s`, so the
    /// one valid signature by a dev key over a hash is the one that key makes.
    fn expected_signature(&self, block: &Block) -> std::result::Result<(), BlockError> {
        let key = keys().iter().find(|k| k.public_key() == block.header.proposer);
        match key.is_some_and(|k| k.sign(&block.hash()) == block.signature) {
            true => Ok(()),
            false => Err(BlockError::BadSignature),
        }
    }
}

/// Rules 1–2 in order, without the code under test.
fn expected_link(child: &BlockHeader, parent: &BlockHeader) -> std::result::Result<(), BlockError> {
    if u128::from(parent.height) + 1 != u128::from(child.height) {
        return Err(BlockError::HeightNotNext {
            height: child.height,
            parent_height: parent.height,
        });
    }
    if child.parent_hash != Hash::of(&parent.to_bytes()) {
        return Err(BlockError::ParentHashMismatch {
            got: child.parent_hash,
            expected: parent.hash(),
        });
    }
    if child.timestamp_ms <= parent.timestamp_ms {
        return Err(BlockError::TimestampNotAfterParent {
            timestamp_ms: child.timestamp_ms,
            parent_timestamp_ms: parent.timestamp_ms,
        });
    }
    Ok(())
}

fn assert_rule(
    got: &std::result::Result<(), BlockError>,
    expected: &std::result::Result<(), BlockError>,
    rules: &[u8],
) {
    assert_eq!(got, expected);
    if let Err(e) = got {
        assert!(rules.contains(&e.rule()), "{e} claims rule {}", e.rule());
        assert!(
            e.to_string().starts_with(&format!("rule {}", e.rule())) || e.rule() == 0,
            "{e}"
        );
    }
}

/// Runs the validity target on one input: byte 0 `% 16 == 0` takes the rest as a protobuf `Block`
/// of the vector chain (the vectors' invalid blocks are seeds of this form), anything else drives
/// the structured generator.
pub fn check(data: &[u8]) {
    let [selector, rest @ ..] = data else {
        return;
    };
    let _ = match selector % 16 {
        0 => from_wire(rest),
        _ => run(&mut Unstructured::new(rest)),
    };
}

fn work_on(chain: &Chain) -> Work<'_> {
    Work { chain }
}

/// A block as a peer sends it, judged against its parent in the vector chain.
fn from_wire(bytes: &[u8]) -> Result<()> {
    use prost::Message;
    let Ok(msg) = syncnode_proto::pb::Block::decode(bytes) else {
        return Ok(());
    };
    let Ok(block) = Block::try_from(msg) else {
        return Ok(());
    };
    let chain = &chains()[0];
    let parent_at = block.header.height.saturating_sub(1).min(CHAIN_LEN) as usize;
    let parent = chain.blocks[parent_at].header;
    judge(&work_on(chain), block, &parent, &mut Unstructured::new(&[]))
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let chain = u.choose(chains())?;
    let mut work = work_on(chain);
    let parent_at = u.int_in_range(0..=CHAIN_LEN as usize - 1)?;
    let parent = chain.blocks[parent_at].clone();
    let mut block = if u.ratio(1u8, 16)? {
        // An arbitrary block after an arbitrary parent header.
        let header = arbitrary_header(u)?;
        let payload = Bytes::from(u.arbitrary::<Vec<u8>>()?);
        Block {
            header,
            payload,
            signature: Signature(u.arbitrary()?),
        }
    } else {
        let payload: Vec<u8> = u.arbitrary()?;
        chain.dev.child(&parent.header, Bytes::from(payload))
    };
    let parent = if u.ratio(1u8, 16)? {
        arbitrary_header(u)?
    } else {
        parent.header
    };
    let mutations = u.int_in_range(0..=8)?;
    for _ in 0..mutations {
        let m: Mutation = u.arbitrary()?;
        work.apply(&mut block, m);
    }
    judge(&work, block, &parent, u)
}

/// Every rule function against the oracle, alone and in a batch of valid blocks.
fn judge(work: &Work<'_>, block: Block, parent: &BlockHeader, u: &mut Unstructured<'_>) -> Result<()> {
    let chain = work.chain;

    let standalone = check_standalone(&block, chain.dev.spec());
    assert_rule(&standalone, &work.expected_standalone(&block), &[0, 3, 4, 5]);
    assert_rule(
        &check_link(&block.header, parent),
        &expected_link(&block.header, parent),
        &[1, 2],
    );

    let now: u64 = u.arbitrary()?;
    let future = u128::from(block.header.timestamp_ms) > u128::from(now) + u128::from(MAX_FUTURE_DRIFT_MS);
    let expected_future = match future {
        true => Err(BlockError::FromTheFuture {
            timestamp_ms: block.header.timestamp_ms,
            now_ms: now,
        }),
        false => Ok(()),
    };
    assert_rule(&check_not_future(&block.header, now), &expected_future, &[6]);

    let known_key = keys().iter().any(|k| k.public_key() == block.header.proposer);
    if known_key {
        assert_eq!(
            check_signature(&block).is_ok(),
            work.expected_signature(&block).is_ok()
        );
    }

    // The block among valid ones: the batch names it exactly as checking one by one does.
    let valid = &chain.blocks[1..];
    let at = u.int_in_range(0..=valid.len())?;
    let mut batch: Vec<Block> = valid.to_vec();
    batch.insert(at, block.clone());
    if u.ratio(1u8, 4)? {
        batch.push(block);
    }
    let expected = batch
        .iter()
        .enumerate()
        .find_map(|(i, b)| work.expected_standalone(b).err().map(|e| (i, e)));
    let got = verify_standalone_batch(&batch, chain.dev.spec()).map_err(|e| (e.index, e.error));
    assert_eq!(got.err(), expected);
    Ok(())
}

fn arbitrary_header(u: &mut Unstructured<'_>) -> Result<BlockHeader> {
    Ok(BlockHeader {
        height: u.arbitrary()?,
        parent_hash: Hash(u.arbitrary()?),
        timestamp_ms: u.arbitrary()?,
        payload_hash: Hash(u.arbitrary()?),
        proposer: PublicKey(u.arbitrary()?),
    })
}
