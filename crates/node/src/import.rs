//! The importer: one thread that commits imports to the store strictly in the order they were
//! asked for, so the engine's in-order imports stay in order, and disk writes never run on the
//! async runtime. After each commit it prunes old history when retention asks for it (see
//! [`crate::retention`]), then publishes the new Status and head on watch channels.

use std::sync::Arc;
use std::time::Instant;

use syncnode_proto::Status;
use syncnode_store::{BlockStore, ImportOutcome, Pointer, StoreError};
use syncnode_sync::{Direction, ImportError, ImportId};
use syncnode_types::Block;
use tokio::sync::{mpsc, watch};

/// Most imports queued for the importer; the engine's window keeps far fewer outstanding.
pub const IMPORT_QUEUE: usize = 64;

/// One import to commit.
#[derive(Debug)]
pub struct ImportJob {
    pub id: Option<ImportId>,
    pub blocks: Vec<Block>,
    pub direction: Direction,
}

/// What happened to an import.
#[derive(Debug)]
pub struct ImportDone {
    pub id: Option<ImportId>,
    pub direction: Direction,
    pub blocks: usize,
    /// The last block, to publish by gossip when it became the head.
    pub last: Option<Block>,
    pub became_head: bool,
    pub result: Result<(), ImportError>,
    pub seconds: f64,
}

/// The chain as last committed, watched by the network (Status), the HTTP API and subscribers.
#[derive(Clone)]
pub struct ChainWatch {
    pub status: watch::Receiver<Status>,
    pub head: watch::Receiver<Pointer>,
}

/// Starts the importer thread. Returns the job queue, the chain watches and the thread, which
/// ends (dropping its share of the store) once the queue's senders are gone and it is drained.
/// With `history_blocks`, history older than that below the finalized block is pruned as the
/// head advances.
pub fn spawn_importer(
    store: Arc<BlockStore>,
    done: mpsc::Sender<ImportDone>,
    history_blocks: Option<u64>,
) -> std::io::Result<(mpsc::Sender<ImportJob>, ChainWatch, std::thread::JoinHandle<()>)> {
    let (jobs_tx, mut jobs) = mpsc::channel::<ImportJob>(IMPORT_QUEUE);
    let (status_tx, status) = watch::channel(store.status());
    let (head_tx, head) = watch::channel(store.head());
    let thread = std::thread::Builder::new()
        .name("importer".into())
        .spawn(move || {
            while let Some(job) = jobs.blocking_recv() {
                let started = Instant::now();
                let head_before = store.head();
                let result = commit(&store, &job);
                if result.is_ok()
                    && let Some(n) = history_blocks
                    && let Err(e) = crate::retention::prune_if_due(&store, n, crate::retention::PRUNE_STEP)
                {
                    tracing::warn!("pruning old history failed: {e}");
                }
                let head_now = store.head();
                if result.is_ok() {
                    status_tx.send_replace(store.status());
                    if head_now != head_before {
                        head_tx.send_replace(head_now);
                    }
                }
                let last = job.blocks.last().cloned();
                let became_head = last.as_ref().is_some_and(|b| b.hash() == head_now.hash);
                let report = ImportDone {
                    id: job.id,
                    direction: job.direction,
                    blocks: job.blocks.len(),
                    last,
                    became_head,
                    result,
                    seconds: started.elapsed().as_secs_f64(),
                };
                if done.blocking_send(report).is_err() {
                    break;
                }
            }
        })?;
    Ok((jobs_tx, ChainWatch { status, head }, thread))
}

fn commit(store: &BlockStore, job: &ImportJob) -> Result<(), ImportError> {
    let head = store.head();
    match job.direction {
        Direction::Forward => match store.import_blocks(&job.blocks) {
            Ok(ImportOutcome::Canonical { .. } | ImportOutcome::Known) => Ok(()),
            // Stored, but the head did not move: to the engine the batch did not extend its chain.
            Ok(ImportOutcome::SideChain { .. }) => Err(ImportError::DoesNotLink {
                height: head.height,
                hash: head.hash,
            }),
            Err(e) => Err(classify(e, head, &job.blocks)),
        },
        Direction::Backfill => match store.import_backfill(&job.blocks) {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(e, store.pointers().low, &job.blocks)),
        },
    }
}

/// Whose fault an import error is: the blocks' (their supplier's, named by the offending block's
/// height) or ours. `anchor` is where the local chain stands (head, or backfill low).
fn classify(e: StoreError, anchor: Pointer, blocks: &[Block]) -> ImportError {
    let height_of = |index: usize| blocks.get(index).map_or(anchor.height, Block::height);
    match e {
        StoreError::UnknownParent { .. } | StoreError::BackfillLink(_) => ImportError::DoesNotLink {
            height: anchor.height,
            hash: anchor.hash,
        },
        StoreError::Invalid { index, error } => ImportError::Rejected {
            height: height_of(index),
            reason: error.to_string(),
        },
        StoreError::ConflictsWithFinalized { finalized, .. } => ImportError::Rejected {
            height: height_of(0),
            reason: format!("conflicts with the finalized block at {finalized}"),
        },
        other => ImportError::Local(other.to_string()),
    }
}
