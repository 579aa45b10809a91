//! Each transition of the batch machine, taken from the states it applies to and refused from
//! the others (nothing changes when refused).

use bytes::Bytes;
use syncnode_types::{Block, BlockHeader, Hash, Height, PublicKey, Signature};

use super::*;

const NOW: u64 = 1_000;

fn blocks(from: Height, to: Height) -> Vec<Block> {
    let mut parent_hash = Hash::of(&from.to_be_bytes());
    (from..=to)
        .map(|height| {
            let body = Bytes::from(vec![1u8; 8]);
            let block = Block {
                header: BlockHeader {
                    height,
                    parent_hash,
                    timestamp_ms: 1_000 + height,
                    payload_hash: Hash::of(&body),
                    proposer: PublicKey::ZERO,
                },
                payload: body,
                signature: Signature::ZERO,
            };
            parent_hash = block.hash();
            block
        })
        .collect()
}

/// A batch over 10..=14 brought to each state by legal transitions.
fn waiting() -> Batch<u32> {
    Batch::new(10, 14, NOW)
}

fn downloading() -> Batch<u32> {
    let mut batch = waiting();
    assert_eq!(batch.download_started(RequestId(1), NOW), Ok(()));
    batch
}

fn complete() -> Batch<u32> {
    let mut batch = downloading();
    assert_eq!(batch.answered(RequestId(1), &7, blocks(10, 14), NOW, 0), Ok(()));
    assert!(batch.is_complete());
    batch
}

fn importing() -> Batch<u32> {
    let mut batch = complete();
    assert_eq!(batch.import_started(ImportId(3)), Ok(()));
    batch
}

fn imported() -> Batch<u32> {
    let mut batch = importing();
    assert_eq!(batch.imported(ImportId(3)), Ok(()));
    batch
}

/// Every state, by name, but the ones listed.
fn all_but(allowed: &[&str]) -> Vec<(&'static str, Batch<u32>)> {
    [
        ("waiting", waiting()),
        ("downloading", downloading()),
        ("complete", complete()),
        ("importing", importing()),
        ("imported", imported()),
    ]
    .into_iter()
    .filter(|(name, _)| !allowed.contains(name))
    .collect()
}

/// Runs `transition` on a batch in every state it must refuse, and checks the refusal names the
/// transition and the state, and that the batch did not change.
fn refused_from_others(
    allowed: &[&str],
    name: &str,
    transition: impl Fn(&mut Batch<u32>) -> Result<(), WrongState>,
) {
    for (state, mut batch) in all_but(allowed) {
        let before = format!("{batch:?}");
        let error = transition(&mut batch).expect_err(&format!("`{name}` must be refused while {state}"));
        assert_eq!((error.transition, error.state), (name, state));
        assert_eq!(
            format!("{batch:?}"),
            before,
            "a refused `{name}` changed a {state} batch"
        );
    }
}

fn config() -> SyncConfig {
    SyncConfig::default()
}

#[test]
fn download_started_needs_a_ready_waiting_batch() {
    refused_from_others(&["waiting"], "download_started", |b| {
        b.download_started(RequestId(9), NOW)
    });
    // Waiting, but its backoff is not over.
    let mut batch = Batch::<u32>::new(10, 14, NOW + 1);
    assert!(batch.download_started(RequestId(9), NOW).is_err());
    assert!(batch.download_started(RequestId(9), NOW + 1).is_ok());
    assert!(batch.is_downloading());
}

#[test]
fn answered_needs_the_download_it_answers() {
    refused_from_others(&["downloading"], "answered", |b| {
        b.answered(RequestId(1), &7, blocks(10, 11), NOW, 0)
    });
    // Another request's answer is refused too.
    let mut batch = downloading();
    assert!(batch.answered(RequestId(2), &7, blocks(10, 11), NOW, 0).is_err());
    // A part: it waits for the rest, from the height after what it holds.
    assert_eq!(batch.answered(RequestId(1), &7, blocks(10, 11), NOW, 50), Ok(()));
    assert_eq!((batch.next_height(), batch.ready_at()), (12, Some(NOW + 50)));
    assert_eq!(batch.supplier_at(11), Some(&7));
}

#[test]
fn download_failed_needs_the_download_that_failed() {
    let (config, mut jitter) = (config(), Jitter::new(1));
    refused_from_others(&["downloading"], "download_failed", |b| {
        b.download_failed(RequestId(1), Some(&7), NOW, &config, &mut Jitter::new(1))
    });
    let mut batch = downloading();
    assert!(
        batch
            .download_failed(RequestId(2), Some(&7), NOW, &config, &mut jitter)
            .is_err()
    );
    assert!(
        batch
            .download_failed(RequestId(1), Some(&7), NOW, &config, &mut jitter)
            .is_ok()
    );
    assert_eq!((batch.failures(), batch.peer_failures().get(&7)), (1, Some(&1)));
    assert!(
        batch
            .ready_at()
            .is_some_and(|t| t >= NOW + config.retry_min_delay_ms)
    );
}

#[test]
fn contested_needs_a_download_and_counts_against_both_suppliers() {
    let config = config();
    refused_from_others(&["downloading"], "contested", |b| {
        b.contested(RequestId(1), &8, NOW, &config, &mut Jitter::new(1))
            .map(|_| ())
    });
    let mut batch = downloading();
    batch
        .answered(RequestId(1), &7, blocks(10, 11), NOW, 0)
        .expect("a part");
    batch
        .download_started(RequestId(2), NOW)
        .expect("the rest asked for");
    let contested = batch.contested(RequestId(2), &8, NOW, &config, &mut Jitter::new(1));
    assert_eq!(contested, Ok(()));
    assert!(batch.blocks().is_empty());
    assert_eq!(batch.peer_failures().get(&7), Some(&1));
    assert_eq!(batch.peer_failures().get(&8), Some(&1));
}

#[test]
fn link_failed_needs_a_complete_batch() {
    let config = config();
    refused_from_others(&["complete"], "link_failed", |b| {
        b.link_failed(Some(&7), true, NOW, &config, &mut Jitter::new(1))
    });
    let mut batch = complete();
    assert!(
        batch
            .link_failed(Some(&7), true, NOW, &config, &mut Jitter::new(1))
            .is_ok()
    );
    assert!(batch.blocks().is_empty());
    assert_eq!(batch.peer_failures().get(&7), Some(&config.max_attempts_per_peer));
}

#[test]
fn import_started_needs_a_complete_batch() {
    refused_from_others(&["complete"], "import_started", |b| b.import_started(ImportId(3)));
}

#[test]
fn imported_needs_the_import_it_confirms() {
    refused_from_others(&["importing"], "imported", |b| b.imported(ImportId(3)));
    let mut batch = importing();
    assert!(batch.imported(ImportId(4)).is_err(), "another import's result");
    assert!(batch.is_importing());
}

#[test]
fn import_failed_needs_an_import() {
    refused_from_others(&["importing"], "import_failed", Batch::import_failed);
    let mut batch = importing();
    assert_eq!(batch.import_failed(), Ok(()));
    assert!(batch.is_complete());
}

#[test]
fn import_rejected_needs_an_import() {
    let config = config();
    refused_from_others(&["importing"], "import_rejected", |b| {
        b.import_rejected(Some(&7), NOW, &config, &mut Jitter::new(1))
    });
    let mut batch = importing();
    assert!(
        batch
            .import_rejected(Some(&7), NOW, &config, &mut Jitter::new(1))
            .is_ok()
    );
    assert!(batch.blocks().is_empty() && batch.ready_at().is_some());
}

#[test]
fn evicted_and_shrunk_never_touch_an_import() {
    refused_from_others(&["waiting", "downloading", "complete"], "evicted", |b| {
        b.evicted(NOW)
    });
    refused_from_others(&["waiting", "downloading", "complete"], "shrunk", |b| {
        b.shrunk(12)
    });
    // Growing is not shrinking.
    assert!(waiting().shrunk(20).is_err());
    // A part-filled batch shrunk to what it holds is complete.
    let mut batch = downloading();
    batch
        .answered(RequestId(1), &7, blocks(10, 11), NOW, 0)
        .expect("a part");
    assert_eq!(batch.shrunk(11), Ok(()));
    assert!(batch.is_complete() && batch.is_full());
}
