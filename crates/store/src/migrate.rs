//! Migrations of stores written by an older schema, run in place at open.
//!
//! A store of schema [`OLDEST_MIGRATED`] or later opens with any later build: [`to_current`] runs
//! each step from the stored version up to [`SCHEMA_VERSION`], and each step ends with the commit
//! that records its new version. A step is idempotent and its commits only rewrite values into a
//! form this build reads as it reads the old one, so a kill at any instant (which leaves some
//! prefix of the commits durable) leaves a store that the next open migrates again, the work
//! already committed being skipped. A store newer than this build is refused by name.
//!
//! Steps:
//! - 3 → 4: block values gain their kind byte ([`BLOCK_INLINE`]). The blocks are found by one
//!   scan of the blocks column; their hashes go to a scratch file beside the database (so memory
//!   stays flat whatever the store's size), then the values are rewritten in bounded commits.
//!   Payloads stay inline: a later import writes large payloads to payload files as usual.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use prost::Message;
use syncnode_proto::pb;
use syncnode_types::Block;

use crate::StoreError;
use crate::schema::*;

/// The oldest schema this build migrates; older stores are refused (sync into a new data dir).
pub const OLDEST_MIGRATED: u32 = 3;
/// Most block values rewritten per commit.
pub const BATCH_BLOCKS: usize = 1024;
/// Most bytes of block values rewritten per commit.
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// How often a long migration logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Commits between drops of the tables' mapped pages: a migration reads and writes every block.
/// Migrating 1,000,000 × 256 B peaked at 517 MiB RSS without the drops, 468 MiB with them (the
/// scan, which cannot drop pages while it runs, is most of the rest).
const RELEASE_EVERY_COMMITS: usize = 64;
/// The scratch file of the 3 → 4 step: the hashes of the block values still to rewrite.
pub const V4_SCRATCH: &str = "migrate-v4.hashes";

/// How a migration runs: its batch size and, in tests, a stop after some commits (standing in
/// for a kill at that instant).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub batch_blocks: usize,
    pub stop_after_commits: Option<usize>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            batch_blocks: BATCH_BLOCKS,
            stop_after_commits: None,
        }
    }
}

/// The schema version recorded in `db`, if any (a store whose creation never committed has none).
pub fn stored_version(db: &parity_db::Db) -> Result<Option<u32>, StoreError> {
    let Some(v) = db.get(COL_META, META_SCHEMA)? else {
        return Ok(None);
    };
    let version = decode_u64("schema", &v)?;
    Ok(Some(u32::try_from(version).unwrap_or(u32::MAX)))
}

/// Brings the store in `db` (at `path`) to [`SCHEMA_VERSION`]. Returns the version it was
/// migrated from, or `None` when it needed nothing.
pub(crate) fn to_current(db: &parity_db::Db, path: &Path, plan: Plan) -> Result<Option<u32>, StoreError> {
    let Some(found) = stored_version(db)? else {
        return Ok(None);
    };
    if found == SCHEMA_VERSION {
        return Ok(None);
    }
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema(found));
    }
    if found < OLDEST_MIGRATED {
        return Err(StoreError::Schema(found));
    }
    let started = Instant::now();
    tracing::info!(store = %path.display(), from = found, to = SCHEMA_VERSION, "migrating the store");
    let mut commits = Commits::new(plan.stop_after_commits);
    for version in found..SCHEMA_VERSION {
        match version {
            3 => v3_to_v4(db, path, plan.batch_blocks, &mut commits)?,
            other => return Err(StoreError::Schema(other)),
        }
    }
    tracing::info!(
        store = %path.display(),
        from = found,
        to = SCHEMA_VERSION,
        seconds = started.elapsed().as_secs_f64(),
        "store migrated"
    );
    Ok(Some(found))
}

/// The commits of a migration, counted so that a test can stop one after any of them.
struct Commits {
    done: usize,
    stop_after: Option<usize>,
}

impl Commits {
    fn new(stop_after: Option<usize>) -> Self {
        Commits { done: 0, stop_after }
    }

    fn commit(&mut self, db: &parity_db::Db, changes: Vec<Change>) -> Result<(), StoreError> {
        if self.stop_after == Some(self.done) {
            return Err(StoreError::MigrationStopped(self.done));
        }
        db.commit(changes)?;
        self.done += 1;
        if self.done.is_multiple_of(RELEASE_EVERY_COMMITS) {
            release_pages(db);
        }
        Ok(())
    }
}

/// Whether a block value predates the kind byte (schema 3 and earlier: the protobuf `Block`
/// alone). A protobuf message never starts with 0 or 1 (field number 0 does not exist), so the
/// two forms cannot be mistaken for each other.
pub fn is_unkinded(value: &[u8]) -> bool {
    !matches!(value.first(), Some(&BLOCK_INLINE) | Some(&BLOCK_EXTERNAL))
}

fn v3_to_v4(
    db: &parity_db::Db,
    path: &Path,
    batch_blocks: usize,
    commits: &mut Commits,
) -> Result<(), StoreError> {
    let scratch = path.join(V4_SCRATCH);
    let total = scan_unkinded(db, &scratch)?;
    tracing::info!(
        blocks = total,
        "schema 3 → 4: rewriting block values with their kind byte"
    );
    let file = File::open(&scratch).map_err(|e| scratch_error(&scratch, "reopening", e))?;
    let mut hashes = BufReader::new(file);
    let (mut done, mut last_log) = (0u64, Instant::now());
    loop {
        let batch = read_hashes(&mut hashes, batch_blocks.max(1), &scratch)?;
        if batch.is_empty() {
            break;
        }
        let mut changes = Vec::with_capacity(batch.len());
        let mut bytes = 0usize;
        for hash in &batch {
            // Read again by key: the value the scan saw may since have been rewritten.
            if let Some(value) = db.get(COL_BLOCKS, hash)?
                && is_unkinded(&value)
            {
                bytes += value.len() + 1;
                let mut kinded = Vec::with_capacity(value.len() + 1);
                kinded.push(BLOCK_INLINE);
                kinded.extend_from_slice(&value);
                changes.push((COL_BLOCKS, hash.to_vec(), Some(kinded)));
            }
            if bytes >= BATCH_BYTES {
                done += changes.len() as u64;
                commits.commit(db, std::mem::take(&mut changes))?;
                bytes = 0;
            }
        }
        done += changes.len() as u64;
        if !changes.is_empty() {
            commits.commit(db, changes)?;
        }
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            tracing::info!("schema 3 → 4: {done} of {total} block values rewritten");
        }
    }
    commits.commit(
        db,
        vec![(COL_META, META_SCHEMA.to_vec(), Some(4u64.to_be_bytes().to_vec()))],
    )?;
    // The scratch file is only a list of work: a kill before this line leaves it to be
    // rewritten by the next open's scan.
    std::fs::remove_file(&scratch).map_err(|e| scratch_error(&scratch, "removing", e))?;
    Ok(())
}

/// Writes the hashes of the block values without a kind byte to `scratch` (replacing what a
/// killed migration left there); returns how many. A value that does not decode is left as it
/// is, for the check at open and `db check` to report like any damaged block.
fn scan_unkinded(db: &parity_db::Db, scratch: &Path) -> Result<u64, StoreError> {
    let file = File::create(scratch).map_err(|e| scratch_error(scratch, "creating", e))?;
    let mut out = BufWriter::new(file);
    let (mut found, mut scanned, mut undecodable) = (0u64, 0u64, 0u64);
    let mut write_error = None;
    let mut last_log = Instant::now();
    db.iter_column_while(COL_BLOCKS, |item| {
        scanned += 1;
        if last_log.elapsed() >= PROGRESS_EVERY {
            last_log = Instant::now();
            tracing::info!("schema 3 → 4: scanned {scanned} block values");
        }
        if !is_unkinded(&item.value) {
            return true;
        }
        let Some(hash) = legacy_block_hash(&item.value) else {
            undecodable += 1;
            return true;
        };
        match out.write_all(&hash) {
            Ok(()) => {
                found += 1;
                true
            }
            Err(e) => {
                write_error = Some(e);
                false
            }
        }
    })?;
    release_pages(db);
    if let Some(e) = write_error {
        return Err(scratch_error(scratch, "writing", e));
    }
    out.flush().map_err(|e| scratch_error(scratch, "writing", e))?;
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "schema 3 → 4: block values that do not decode were left as they are"
        );
    }
    Ok(found)
}

/// The hash of a schema-3 block value (the protobuf `Block`), if it decodes.
fn legacy_block_hash(value: &[u8]) -> Option<[u8; 32]> {
    let msg = pb::Block::decode(value).ok()?;
    let block = Block::try_from(msg).ok()?;
    Some(block.hash().0)
}

/// Up to `n` hashes from the scratch file; a torn last hash ends the list.
fn read_hashes(r: &mut impl Read, n: usize, scratch: &Path) -> Result<Vec<[u8; 32]>, StoreError> {
    let mut out = Vec::with_capacity(n);
    let mut hash = [0u8; 32];
    while out.len() < n {
        match r.read_exact(&mut hash) {
            Ok(()) => out.push(hash),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(scratch_error(scratch, "reading", e)),
        }
    }
    Ok(out)
}

fn scratch_error(path: &Path, what: &str, source: std::io::Error) -> StoreError {
    StoreError::MigrationIo {
        path: path.to_owned(),
        what: format!("{what} the migration's scratch file"),
        source,
    }
}

/// Drops the tables' mapped pages from the process (only memory is at stake if it fails).
fn release_pages(db: &parity_db::Db) {
    if let Err(e) = db.release_pages() {
        tracing::warn!(error = %e, "releasing the store's mapped pages failed");
    }
}
