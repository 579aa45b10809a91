//! The importer: one thread that commits imports to the store strictly in the order they were asked
//! for, so the engine's in-order imports stay in order, and disk writes never run on the async
//! runtime. Imports that queue up while it commits (the store is the slower stage) and continue one
//! another are committed together: each commit ends with a sync of the payload files (~6 ms here),
//! so while syncing 1 KiB blocks the sync, not the writing, was 60% of the importer's time at one
//! commit per 512-block batch. After each commit it prunes old history when retention asks for it
//! (see [`crate::retention`]), then publishes the new Status and head on watch channels; a commit
//! holding a block this node produced is synced to disk first, so peers never see (in Status,
//! ranges, roots or gossip) a produced block a crash could still take back. It pauses before a
//! commit while the data directory lacks room, and after a write that failed for lack of it, until
//! there is room again ([`crate::disk`]).

use std::sync::Arc;
use std::time::Instant;

use syncnode_proto::Status;
use syncnode_store::{BlockStore, ImportOutcome, Pointer, StoreError};
use syncnode_sync::{Direction, ImportError, ImportId};
use syncnode_types::Block;
use tokio::sync::{mpsc, watch};

use crate::disk::DiskSpace;

/// Most imports queued for the importer; the engine's window keeps far fewer outstanding.
pub const IMPORT_QUEUE: usize = 64;
/// Most blocks committed together when several queued imports continue one another. parity-db
/// keeps a 512-byte index chunk per written key until a commit is logged, so larger groups cost
/// memory: syncing 1,000,000 × 256 B peaked at ~155 MiB with groups of 4,096 blocks and
/// ~130–138 MiB with 1,024, at the same speed within this machine's noise.
pub const MERGE_MAX_BLOCKS: usize = 1024;
/// Most bytes of blocks committed together.
pub const MERGE_MAX_BYTES: usize = 8 * 1024 * 1024;

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
    disk: Arc<DiskSpace>,
) -> std::io::Result<(mpsc::Sender<ImportJob>, ChainWatch, std::thread::JoinHandle<()>)> {
    let (jobs_tx, jobs) = mpsc::channel::<ImportJob>(IMPORT_QUEUE);
    let (status_tx, status) = watch::channel(store.status());
    let (head_tx, head) = watch::channel(store.head());
    let importer = Importer {
        store,
        done,
        history_blocks,
        disk,
        status_tx,
        head_tx,
    };
    let thread = std::thread::Builder::new()
        .name("importer".into())
        .spawn(move || importer.run(jobs))?;
    Ok((jobs_tx, ChainWatch { status, head }, thread))
}

/// The importer thread's state.
struct Importer {
    store: Arc<BlockStore>,
    done: mpsc::Sender<ImportDone>,
    history_blocks: Option<u64>,
    disk: Arc<DiskSpace>,
    status_tx: watch::Sender<Status>,
    head_tx: watch::Sender<Pointer>,
}

impl Importer {
    fn run(self, mut jobs: mpsc::Receiver<ImportJob>) {
        let mut held = None;
        while let Some(group) = next_group(&mut jobs, &mut held) {
            if !self
                .disk
                .wait_for_room(|| self.done.is_closed() || jobs.is_closed())
            {
                return;
            }
            let started = Instant::now();
            let mut results = commit_group(&self.store, &group, &self.disk);
            if results.iter().any(Result::is_ok) && self.durable_if_produced(&group, &mut results) {
                self.after_commit();
            }
            if !self.report(group, results, started) || self.disk.store_stopped() {
                // With parity-db stopped no commit can succeed; what it holds is still served.
                return;
            }
        }
    }

    /// A block this node produced (a job without an engine id) is shown to peers (Status, served
    /// ranges and roots, gossip) only once its commit is durable: a producer killed right after
    /// must still hold every block a peer may have taken from it, or it would build a rival at
    /// that height. One `fsync` per produced block, on this thread. When that sync fails, the
    /// produced jobs' results become that error (so the block is not gossiped either) and
    /// `false` is returned: the head is then published with the next commit that is durable.
    fn durable_if_produced(&self, group: &[ImportJob], results: &mut [Result<(), ImportError>]) -> bool {
        let produced = |job: &ImportJob, result: &Result<(), ImportError>| {
            job.id.is_none() && job.direction == Direction::Forward && result.is_ok()
        };
        if !group
            .iter()
            .zip(results.iter())
            .any(|(job, result)| produced(job, result))
        {
            return true;
        }
        let Err(e) = self.store.sync() else {
            return true;
        };
        tracing::warn!("produced block not shown to peers: store sync failed: {e}");
        self.disk.write_failed(&e);
        for (job, result) in group.iter().zip(results.iter_mut()) {
            if produced(job, result) {
                *result = Err(ImportError::Local(format!("store sync failed: {e}")));
            }
        }
        false
    }

    /// Prunes if due, then publishes the new Status and head.
    fn after_commit(&self) {
        if let Some(n) = self.history_blocks
            && let Err(e) = crate::retention::prune_if_due(&self.store, n, crate::retention::PRUNE_STEP)
        {
            tracing::warn!("pruning old history failed: {e}");
            self.disk.write_failed(&e);
        }
        self.status_tx.send_replace(self.store.status());
        // Against what was published, not the head before this commit: a checkpoint anchored
        // since the last publication moved the head without a commit of ours.
        self.head_tx.send_if_modified(|published| {
            let head_now = self.store.head();
            let moved = *published != head_now;
            *published = head_now;
            moved
        });
    }

    /// Tells the event loop what became of each job; `false` once it is gone.
    fn report(&self, group: Vec<ImportJob>, results: Vec<Result<(), ImportError>>, started: Instant) -> bool {
        let head_now = self.store.head();
        // The group's time, shared by its jobs in proportion to their blocks.
        let seconds = started.elapsed().as_secs_f64();
        let total = group.iter().map(|j| j.blocks.len()).sum::<usize>().max(1);
        for (job, result) in group.into_iter().zip(results) {
            let last = job.blocks.last().cloned();
            let became_head = last.as_ref().is_some_and(|b| b.hash() == head_now.hash);
            let report = ImportDone {
                id: job.id,
                direction: job.direction,
                blocks: job.blocks.len(),
                last,
                became_head,
                result,
                seconds: seconds * job.blocks.len() as f64 / total as f64,
            };
            if self.done.blocking_send(report).is_err() {
                return false;
            }
        }
        true
    }
}

/// Waits for the next job, then takes the queued jobs that continue it (same direction, linked
/// by parent hash), up to [`MERGE_MAX_BLOCKS`] and [`MERGE_MAX_BYTES`]: one group, committed
/// together. A queued job that does not continue the group is `held` for the next one. `None`
/// once the queue is closed and drained.
fn next_group(jobs: &mut mpsc::Receiver<ImportJob>, held: &mut Option<ImportJob>) -> Option<Vec<ImportJob>> {
    let first = match held.take() {
        Some(job) => job,
        None => jobs.blocking_recv()?,
    };
    let mut size = GroupSize::default();
    size.add(&first.blocks);
    let mut group = vec![first];
    while !size.is_full() {
        let Ok(next) = jobs.try_recv() else {
            break;
        };
        if !size.takes(&next.blocks) || !group.last().is_some_and(|prev| continues(prev, &next)) {
            *held = Some(next);
            break;
        }
        size.add(&next.blocks);
        group.push(next);
    }
    Some(group)
}

/// The size of a group of imports committed together, and what may join it: the one rule for
/// the importer and for the benchmark's store import limit.
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupSize {
    blocks: usize,
    bytes: usize,
}

impl GroupSize {
    /// Whether the group takes no more imports: it holds [`MERGE_MAX_BLOCKS`] blocks or
    /// [`MERGE_MAX_BYTES`] bytes.
    pub fn is_full(&self) -> bool {
        self.blocks >= MERGE_MAX_BLOCKS || self.bytes >= MERGE_MAX_BYTES
    }

    /// Whether an import of `blocks` may join: any import starts an empty group; a group that is
    /// not full takes one that keeps it within [`MERGE_MAX_BLOCKS`].
    pub fn takes(&self, blocks: &[Block]) -> bool {
        self.blocks == 0 || (!self.is_full() && self.blocks + blocks.len() <= MERGE_MAX_BLOCKS)
    }

    /// Counts an import of `blocks` into the group.
    pub fn add(&mut self, blocks: &[Block]) {
        self.blocks += blocks.len();
        self.bytes += blocks.iter().map(Block::size_bytes).sum::<usize>();
    }
}

/// Whether `next` takes up where `prev` ends: forward, its first block's parent is `prev`'s
/// last block; backfill, its last block is the parent of `prev`'s first.
fn continues(prev: &ImportJob, next: &ImportJob) -> bool {
    if prev.direction != next.direction {
        return false;
    }
    let (Some(prev_first), Some(prev_last)) = (prev.blocks.first(), prev.blocks.last()) else {
        return false;
    };
    let (Some(next_first), Some(next_last)) = (next.blocks.first(), next.blocks.last()) else {
        return false;
    };
    match next.direction {
        Direction::Forward => next_first.header.parent_hash == prev_last.hash(),
        Direction::Backfill => next_last.hash() == prev_first.header.parent_hash,
    }
}

/// Commits a group: all its blocks in one store commit (so one payload sync), when that
/// succeeds; otherwise job by job, so each gets exactly the result it would have had alone (a
/// store import is atomic: the failed attempt changed nothing).
fn commit_group(store: &BlockStore, group: &[ImportJob], disk: &DiskSpace) -> Vec<Result<(), ImportError>> {
    if let [first, _, ..] = group {
        let merged: Vec<Block> = match first.direction {
            Direction::Forward => group.iter().flat_map(|j| j.blocks.iter().cloned()).collect(),
            Direction::Backfill => group
                .iter()
                .rev()
                .flat_map(|j| j.blocks.iter().cloned())
                .collect(),
        };
        if commit(store, first.direction, &merged, disk).is_ok() {
            return group.iter().map(|_| Ok(())).collect();
        }
    }
    group
        .iter()
        .map(|job| commit(store, job.direction, &job.blocks, disk))
        .collect()
}

fn commit(
    store: &BlockStore,
    direction: Direction,
    blocks: &[Block],
    disk: &DiskSpace,
) -> Result<(), ImportError> {
    let head = store.head();
    let failed = |e: StoreError| {
        disk.write_failed(&e);
        e
    };
    match direction {
        Direction::Forward => match store.import_blocks(blocks) {
            Ok(ImportOutcome::Canonical { .. } | ImportOutcome::Known) => Ok(()),
            // Stored aside, and the head did not move (fork choice kept our chain): the engine
            // goes on fetching a fork it searches, or restarts from the head.
            Ok(ImportOutcome::SideChain { .. }) => Err(ImportError::SideChain {
                height: head.height,
                hash: head.hash,
            }),
            Err(e) => Err(classify(failed(e), head, blocks)),
        },
        Direction::Backfill => match store.import_backfill(blocks) {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(failed(e), store.pointers().low, blocks)),
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

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::{ChainSpec, DevChain};

    fn spec() -> ChainSpec {
        ChainSpec::dev("importer", 1, 1_000_000, 1000, 10).expect("spec")
    }

    fn chain(n: u64) -> Vec<Block> {
        let spec = spec();
        DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, n, 600)
    }

    fn store(dir: &tempfile::TempDir) -> BlockStore {
        BlockStore::open(dir.path(), &spec()).expect("open").0
    }

    fn roomy(dir: &tempfile::TempDir) -> Arc<DiskSpace> {
        DiskSpace::new(dir.path(), 0)
    }

    fn job(blocks: &[Block], direction: Direction) -> ImportJob {
        ImportJob {
            id: None,
            blocks: blocks.to_vec(),
            direction,
        }
    }

    fn queue(jobs: Vec<ImportJob>) -> mpsc::Receiver<ImportJob> {
        let (tx, rx) = mpsc::channel(IMPORT_QUEUE);
        for j in jobs {
            tx.try_send(j).expect("queue");
        }
        rx
    }

    #[test]
    fn queued_imports_that_continue_one_another_commit_together() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(&dir);
        let blocks = chain(600);
        let mut jobs: Vec<ImportJob> = blocks[..400]
            .chunks(100)
            .map(|part| job(part, Direction::Forward))
            .collect();
        // A gap: does not continue the group, so it waits for the next one.
        jobs.push(job(&blocks[500..], Direction::Forward));
        let mut rx = queue(jobs);
        let mut held = None;
        let group = next_group(&mut rx, &mut held).expect("group");
        assert_eq!(group.len(), 4);
        assert!(held.is_some(), "the job after the gap is held");
        assert_eq!(commit_group(&store, &group, &roomy(&dir)), vec![Ok(()); 4]);
        assert_eq!(store.head(), Pointer::at(&blocks[399]));

        let group = next_group(&mut rx, &mut held).expect("group");
        assert_eq!(group.len(), 1);
        assert!(matches!(
            commit_group(&store, &group, &roomy(&dir))[..],
            [Err(ImportError::DoesNotLink { height: 400, .. })]
        ));
        drop(rx);
        assert!(next_group(&mut queue(Vec::new()), &mut None).is_none());
    }

    #[test]
    fn groups_stop_at_the_block_limit() {
        let blocks = chain(MERGE_MAX_BLOCKS as u64 + 512);
        let jobs = blocks
            .chunks(512)
            .map(|part| job(part, Direction::Forward))
            .collect();
        let mut rx = queue(jobs);
        let mut held = None;
        let group = next_group(&mut rx, &mut held).expect("group");
        assert_eq!(
            group.iter().map(|j| j.blocks.len()).sum::<usize>(),
            MERGE_MAX_BLOCKS
        );
        let rest = next_group(&mut rx, &mut held).expect("group");
        assert_eq!(rest.len(), 1, "the job past the limit starts the next group");
    }

    #[test]
    fn a_bad_job_in_a_group_gets_the_result_it_would_have_had_alone() {
        let blocks = chain(300);
        // The middle job skips height 151 (blocks[i] is at height i + 1), but starts where the first ends and ends where
        // the third starts: the group forms, its merged commit fails, and the jobs go one by one.
        let mut broken = blocks[100..150].to_vec();
        broken.extend_from_slice(&blocks[151..200]);
        let jobs = || {
            vec![
                job(&blocks[..100], Direction::Forward),
                job(&broken, Direction::Forward),
                job(&blocks[200..], Direction::Forward),
            ]
        };
        let grouped_dir = tempfile::tempdir().expect("tmp");
        let grouped_store = store(&grouped_dir);
        let group = next_group(&mut queue(jobs()), &mut None).expect("group");
        assert_eq!(group.len(), 3);
        let grouped = commit_group(&grouped_store, &group, &roomy(&grouped_dir));

        let alone_dir = tempfile::tempdir().expect("tmp");
        let alone_store = store(&alone_dir);
        let alone: Vec<_> = jobs()
            .iter()
            .map(|j| commit(&alone_store, j.direction, &j.blocks, &roomy(&alone_dir)))
            .collect();
        assert_eq!(grouped, alone);
        assert_eq!(grouped[0], Ok(()));
        assert!(matches!(
            grouped[1],
            Err(ImportError::Rejected { height: 152, .. })
        ));
        assert!(matches!(grouped[2], Err(ImportError::DoesNotLink { .. })));
        assert_eq!(grouped_store.head(), Pointer::at(&blocks[99]));
    }

    #[test]
    fn a_fork_is_stored_aside_until_it_is_longer_then_becomes_the_head() {
        let spec = spec();
        let dev = DevChain::new(&spec).expect("dev");
        let blocks = chain(100);
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(&dir);
        let disk = roomy(&dir);
        assert_eq!(commit(&store, Direction::Forward, &blocks, &disk), Ok(()));
        // A fork above the finalized height 90 (blocks[i] is at height i + 1), other payloads.
        let fork = dev.extend(&blocks[94].header, 3, 601);
        let head = blocks[99].hash();
        assert_eq!(
            commit(&store, Direction::Forward, &fork, &disk),
            Err(ImportError::SideChain {
                height: 100,
                hash: head
            }),
            "not longer: kept aside, the head stays"
        );
        let Some(fork_tip) = fork.last() else {
            panic!("a fork")
        };
        let longer = dev.extend(&fork_tip.header, 5, 601);
        assert_eq!(commit(&store, Direction::Forward, &longer, &disk), Ok(()));
        assert_eq!(store.head().height, 103, "the longer fork is the head");
    }

    #[test]
    fn backfill_jobs_merge_downwards() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store(&dir);
        let blocks = chain(300);
        store.start_from_checkpoint(&blocks[299]).expect("checkpoint");
        let jobs = vec![
            job(&blocks[200..299], Direction::Backfill),
            job(&blocks[100..200], Direction::Backfill),
            job(&blocks[..100], Direction::Backfill),
        ];
        let group = next_group(&mut queue(jobs), &mut None).expect("group");
        assert_eq!(group.len(), 3);
        assert_eq!(commit_group(&store, &group, &roomy(&dir)), vec![Ok(()); 3]);
        assert_eq!(store.pointers().low.height, 0);
        assert!(store.verify_chain(|_, _| {}).expect("check").is_ok());
    }
}
