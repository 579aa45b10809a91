//! syncnode's block store on parity-db.
//!
//! ## Layout
//! Three columns ([`schema`]): blocks by hash (canonical and side-chain blocks, as protobuf
//! `Block` bytes), the canonical index height → hash (in segments of 64 heights, one value each,
//! read and rewritten within the commit that changes them: `canon.rs`), and metadata: the
//! pointers `genesis`, `head`, `finalized`, `anchor` (the trusted checkpoint a node started
//! from), `backfill_low` (the lowest block from which the canonical chain is unbroken up to the
//! head; its height is the node's `earliest_height`), `history_floor` (the height below which
//! history is not kept: backfill stops there and pruning moves it up), and subscriber cursors.
//! Payloads of at least 512 bytes are not written to parity-db but once to append-only payload
//! files beside it, synced before the commit that references them (`payloads.rs`): parity-db
//! writes every value twice, which made the import of large blocks several times slower than the
//! disk, and of 1 KiB blocks half as fast.
//!
//! ## Schema versions
//! The layout's version is stored under `schema` ([`schema::SCHEMA_VERSION`]). A store of an
//! older version from 3 on is migrated in place at open, before anything else reads it; a kill
//! during a migration leaves a store the next open migrates (see `migrate.rs`). A newer version
//! is refused by name ([`StoreError::NewerSchema`]).
//!
//! ## History retention
//! [`BlockStore::prune_below`] deletes canonical blocks from the bottom of the unbroken range, never
//! at or above the finalized block, keeping genesis, in bounded commits that each move the low
//! pointer and the floor with the deletions (see `prune.rs`). Nothing else ever moves the low
//! pointer up, except the repair at open.
//!
//! ## Crash safety
//! Every change that moves a pointer is one parity-db commit together with the blocks and index
//! entries it points to. parity-db applies a commit atomically and in order; `commit` only queues
//! it: its log worker writes it to the log file shortly after (then a kill cannot lose it), and
//! syncs that file to disk once it is full (then a power loss cannot); [`BlockStore::sync`] waits
//! for both, and dropping the store flushes everything. So after `kill -9` at any instant, the
//! store reopens at some prefix of the commit sequence: a consistent state whose newest commits
//! may be missing, which the node fetches again from peers (a producer announces a block only
//! once `sync` returned, so it never loses one its peers hold). Payloads kept in payload files
//! are synced before the commit that references them, and what lies past the last committed
//! payload is cut off at open. On open,
//! [`BlockStore::open`] checks the recent chain (head down to the finalized block, bounded) and,
//! where blocks under a pointer are missing or damaged (say, the tail of a data file lost with the
//! power), rolls the pointer back to the highest intact linked block and reports what it did
//! ([`RepairReport`]). [`BlockStore::verify_chain`] checks the whole chain, every rule and every
//! link.
//!
//! ## Invariants (after every commit)
//! - `canon[h]` exists for every `h` in `[backfill_low, head]`, names a stored block of height `h`,
//!   and that block's `parent_hash` is `canon[h-1]` for `h > backfill_low`.
//! - `canon[0]` is the genesis derived from the chain spec; `finalized` lies in
//!   `[backfill_low, head]` and on the canonical chain; the canonical chain never changes at or
//!   below `finalized` (fork choice only reorganises above it).
//! - Imports are idempotent: importing blocks that are already canonical changes nothing.
//!
//! Rules 3–5 of a block (payload, proposer, signature) are the caller's to check before import
//! (the node verifies them in parallel off the async runtime); the store checks rules 1–2 (links)
//! itself, because only it knows the parent.

#![forbid(unsafe_code)]

mod cache;
pub mod canon;
mod check;
pub mod migrate;
pub mod payloads;
mod prune;
mod repair;
mod resident;
pub mod schema;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};

use syncnode_proto::Status;
use syncnode_types::{Block, BlockError, ChainSpec, Hash, Height};

pub use check::{ChainReport, CheckFault};
pub use prune::{PRUNE_CHUNK, PruneOutcome};
pub use repair::RepairReport;
pub use schema::Pointer;
pub use write::{BackfillOutcome, ImportOutcome};

use cache::BlockCache;
use canon::{CanonEdits, CanonReader};
use migrate::OLDEST_MIGRATED;
use payloads::{PayloadFiles, Tail};
use resident::PageRelease;
use schema::*;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] parity_db::Error),
    #[error("store at {path} belongs to chain with genesis {found}, not {expected}")]
    WrongChain {
        path: PathBuf,
        found: Hash,
        expected: Hash,
    },
    #[error(
        "store schema version {0} is older than the oldest this build migrates \
         ({OLDEST_MIGRATED}): sync into a new --data-dir"
    )]
    Schema(u32),
    #[error(
        "store schema version {0} is newer than this build's ({SCHEMA_VERSION}): it was written by \
         a later syncnode and is not converted back; run that version or a later one, or sync into \
         a new --data-dir"
    )]
    NewerSchema(u32),
    #[error("{what} {path}: {source}")]
    MigrationIo {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    /// A migration stopped on purpose after that many commits (tests stand it in for a kill).
    #[error("migration stopped after {0} commits")]
    MigrationStopped(usize),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    #[error("payload file {path}: {what}: {source}")]
    PayloadIo {
        path: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error(
        "store at {path} was written with another column layout (an older syncnode): sync into a \
         new --data-dir ({detail})"
    )]
    Layout { path: PathBuf, detail: String },
    #[error("block {index} of the import: {error}")]
    Invalid { index: usize, error: BlockError },
    #[error("parent {parent} of block at height {height} is unknown")]
    UnknownParent { height: Height, parent: Hash },
    #[error("import would reorganise at height {fork_height}, at or below finalized height {finalized}")]
    ConflictsWithFinalized { fork_height: Height, finalized: Height },
    #[error("backfill batch does not link: {0}")]
    BackfillLink(String),
    #[error("checkpoint refused: {0}")]
    Checkpoint(String),
    #[error("empty import")]
    Empty,
}

impl StoreError {
    /// Whether this error is the fault of the blocks given (and so of the peer that sent them),
    /// rather than of the store.
    pub fn is_bad_data(&self) -> bool {
        matches!(
            self,
            StoreError::Invalid { .. }
                | StoreError::UnknownParent { .. }
                | StoreError::ConflictsWithFinalized { .. }
                | StoreError::BackfillLink(_)
        )
    }

    /// Whether this error is a write that failed for lack of disk space.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::PayloadIo { source, .. } => is_no_space(source),
            StoreError::Db(e) => db_out_of_space(e),
            _ => false,
        }
    }

    /// Whether parity-db has stopped: a background write failed and it takes no more commits
    /// until it is opened again.
    pub fn is_db_stopped(&self) -> bool {
        matches!(self, StoreError::Db(parity_db::Error::Background(_)))
    }
}

fn is_no_space(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
}

fn db_out_of_space(e: &parity_db::Error) -> bool {
    match e {
        parity_db::Error::Io(io) => is_no_space(io),
        parity_db::Error::Background(inner) => db_out_of_space(inner),
        _ => false,
    }
}

/// Tuning of a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most blocks in the read cache.
    pub cache_blocks: usize,
    /// Most bytes of blocks in the read cache.
    pub cache_bytes: usize,
    /// How far below the head the check at open walks.
    pub open_check_depth: u64,
    /// Whether open repairs what its check finds (off for read-only inspection such as `db check`),
    /// and tidies the payload files (cuts uncommitted bytes, removes unreferenced files).
    pub repair_on_open: bool,
    /// Size at which a payload file is closed and the next one started.
    pub payload_file_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_blocks: 4096,
            cache_bytes: 16 * 1024 * 1024,
            open_check_depth: 1024,
            repair_on_open: true,
            payload_file_bytes: payloads::FILE_TARGET_BYTES,
        }
    }
}

/// The pointers, as last committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointers {
    pub genesis: Hash,
    pub head: Pointer,
    pub finalized: Pointer,
    /// Lowest block of the unbroken canonical range up to the head.
    pub low: Pointer,
    /// The trusted checkpoint this store started from, if any.
    pub anchor: Option<Pointer>,
    /// Blocks below this height are not kept (0: full history): backfill stops here, and
    /// pruning raises it with the low pointer.
    pub floor: Height,
}

/// The block store. Cheap to share behind an `Arc`; reads run concurrently, writes serialise.
pub struct BlockStore {
    db: parity_db::Db,
    payloads: PayloadFiles,
    path: PathBuf,
    spec: ChainSpec,
    pointers: RwLock<Pointers>,
    cache: Mutex<BlockCache>,
    writer: Mutex<()>,
    /// When the memory-mapped pages of the tables are next dropped (`resident.rs`).
    release: PageRelease,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these structures half-updated in a way that
    // matters (the cache is advisory, the writer lock guards no data), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BlockStore {
    /// Opens the store in `path` for `spec`, creating it with genesis if new, then checks the
    /// recent chain and repairs what a crash may have left (see the crate docs).
    pub fn open(path: &Path, spec: &ChainSpec) -> Result<(Self, RepairReport), StoreError> {
        Self::open_with(path, spec, StoreConfig::default())
    }

    /// [`BlockStore::open`] with explicit tuning.
    pub fn open_with(
        path: &Path,
        spec: &ChainSpec,
        config: StoreConfig,
    ) -> Result<(Self, RepairReport), StoreError> {
        std::fs::create_dir_all(path).map_err(parity_db::Error::Io)?;
        let db = open_db(path, parity_db::Db::open_or_create)?;
        migrate::to_current(&db, path, migrate::Plan::default())?;
        let genesis = spec.genesis();
        let genesis_ptr = Pointer::at(&genesis);
        if db.get(COL_META, META_GENESIS)?.is_none() {
            let mut changes = vec![(
                COL_BLOCKS,
                genesis_ptr.hash.0.to_vec(),
                Some(encode_block(&genesis)),
            )];
            let mut canon = CanonEdits::default();
            canon.set(0, genesis_ptr.hash);
            canon.write_to(&db, &mut changes)?;
            changes.extend([
                (
                    COL_META,
                    META_SCHEMA.to_vec(),
                    Some(u64::from(SCHEMA_VERSION).to_be_bytes().to_vec()),
                ),
                (COL_META, META_HEAD.to_vec(), Some(genesis_ptr.encode())),
                (COL_META, META_FINALIZED.to_vec(), Some(genesis_ptr.encode())),
                (COL_META, META_LOW.to_vec(), Some(genesis_ptr.encode())),
                (COL_META, META_SPEC.to_vec(), Some(spec.to_json().into_bytes())),
                // Genesis last: its presence marks a store whose creation committed.
                (COL_META, META_GENESIS.to_vec(), Some(genesis_ptr.hash.0.to_vec())),
            ]);
            db.commit(changes)?;
        }
        let pointers = load_pointers(&db, path, &genesis_ptr.hash)?;
        let tail = match db.get(COL_META, META_PAYLOAD_TAIL)? {
            Some(v) => Tail::decode(&v)?,
            None => Tail::default(),
        };
        let payloads = PayloadFiles::open(
            &path.join("payloads"),
            tail,
            config.payload_file_bytes,
            config.repair_on_open,
            |file| Ok(db.get_size(COL_META, &payload_live_key(file))?.is_some()),
        )?;
        let store = BlockStore {
            db,
            payloads,
            path: path.to_owned(),
            spec: spec.clone(),
            pointers: RwLock::new(pointers),
            cache: Mutex::new(BlockCache::new(config.cache_blocks, config.cache_bytes)),
            writer: Mutex::new(()),
            release: PageRelease::default(),
        };
        let report = store.check_and_repair_recent(config.open_check_depth, config.repair_on_open)?;
        Ok((store, report))
    }

    /// Opens an existing store with the chain spec it was created with.
    pub fn open_existing(path: &Path, config: StoreConfig) -> Result<(Self, RepairReport), StoreError> {
        let spec = read_spec(path)?;
        Self::open_with(path, &spec, config)
    }

    /// The chain spec this store belongs to.
    pub fn spec(&self) -> &ChainSpec {
        &self.spec
    }

    /// The directory of the store.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pointers as last committed.
    pub fn pointers(&self) -> Pointers {
        *self.pointers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_pointers(&self, p: Pointers) {
        *self.pointers.write().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Waits until every commit made so far is durable: written to parity-db's log file, so it
    /// survives the process being killed, and synced to disk, so it survives a power loss.
    /// `import_blocks` returns once its commit is queued, before that. Blocking (one `fsync`):
    /// call it off the async runtime.
    pub fn sync(&self) -> Result<(), StoreError> {
        self.db.sync_log()?;
        Ok(())
    }

    /// The canonical head.
    pub fn head(&self) -> Pointer {
        self.pointers().head
    }

    /// This node's Status as PROTOCOL.md defines it.
    pub fn status(&self) -> Status {
        let p = self.pointers();
        Status {
            genesis_hash: p.genesis,
            head_height: p.head.height,
            head_hash: p.head.hash,
            finalized_height: p.finalized.height,
            finalized_hash: p.finalized.hash,
            earliest_height: p.low.height,
        }
    }

    /// The hash of the canonical block at `height`, if stored.
    pub fn hash_at(&self, height: Height) -> Result<Option<Hash>, StoreError> {
        CanonReader::new(&self.db).hash_at(height)
    }

    /// The block with this hash, canonical or not.
    pub fn block(&self, hash: &Hash) -> Result<Option<Block>, StoreError> {
        if let Some(block) = lock(&self.cache).get(hash) {
            return Ok(Some(block));
        }
        let Some(bytes) = self.db.get(COL_BLOCKS, &hash.0)? else {
            return Ok(None);
        };
        // Decoded from its own stored value: its payload holds nothing beyond the block.
        let block = match decode_block(hash, bytes)? {
            StoredBlock::Inline(block) => block,
            StoredBlock::External { mut shell, payload } => {
                shell.payload = self.payloads.read(&payload)?.into();
                shell
            }
        };
        lock(&self.cache).insert(block.clone());
        Ok(Some(block))
    }

    /// Whether a block with this hash is stored.
    pub fn contains(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.db.get_size(COL_BLOCKS, &hash.0)?.is_some())
    }

    /// The canonical block at `height`.
    pub fn block_at(&self, height: Height) -> Result<Option<Block>, StoreError> {
        self.block_in(&mut CanonReader::new(&self.db), height)
    }

    /// The canonical block at `height`, its hash read through `canon`.
    pub(crate) fn block_in(
        &self,
        canon: &mut CanonReader<'_>,
        height: Height,
    ) -> Result<Option<Block>, StoreError> {
        match canon.hash_at(height)? {
            Some(hash) => self.block(&hash),
            None => Ok(None),
        }
    }

    /// Canonical blocks from `start`, ascending and consecutive: at most `count`, stopping at the
    /// head, at a gap, or before the encoded response would exceed `max_bytes`.
    pub fn blocks_by_range(
        &self,
        start: Height,
        count: u64,
        max_bytes: usize,
    ) -> Result<Vec<Block>, StoreError> {
        let head = self.head().height;
        let end = start.saturating_add(count).min(head.saturating_add(1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut canon = CanonReader::new(&self.db);
        for height in start..end {
            let Some(block) = self.block_in(&mut canon, height)? else {
                break;
            };
            bytes += syncnode_proto::convert::encoded_block_field_len(&block);
            if bytes > max_bytes {
                break;
            }
            out.push(block);
        }
        Ok(out)
    }

    /// The stored blocks among `hashes`, in request order, skipping absent ones, within `max_bytes`.
    pub fn blocks_by_root(&self, hashes: &[Hash], max_bytes: usize) -> Result<Vec<Block>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for hash in hashes {
            let Some(block) = self.block(hash)? else {
                continue;
            };
            bytes += syncnode_proto::convert::encoded_block_field_len(&block);
            if bytes > max_bytes {
                break;
            }
            out.push(block);
        }
        Ok(out)
    }

    /// Bytes of blocks held in the read cache (for metrics).
    pub fn cache_bytes(&self) -> usize {
        lock(&self.cache).bytes()
    }

    /// The persisted height of a named subscriber's cursor.
    pub fn cursor(&self, name: &str) -> Result<Option<Height>, StoreError> {
        let key = cursor_key(name);
        self.db
            .get(COL_META, &key)?
            .map(|v| decode_u64("cursor", &v))
            .transpose()
    }

    /// Persists a named subscriber's cursor (the last height it acknowledged).
    pub fn set_cursor(&self, name: &str, height: Height) -> Result<(), StoreError> {
        self.db.commit(vec![(
            COL_META,
            cursor_key(name),
            Some(height.to_be_bytes().to_vec()),
        )])?;
        Ok(())
    }
}

/// Opens the parity-db database at `path` with this layout's options, naming a layout mismatch
/// (a store of an older schema) as such.
fn open_db(
    path: &Path,
    open: fn(&parity_db::Options) -> parity_db::Result<parity_db::Db>,
) -> Result<parity_db::Db, StoreError> {
    open(&db_options(path)).map_err(|e| match e {
        parity_db::Error::InvalidConfiguration(detail) => StoreError::Layout {
            path: path.to_owned(),
            detail,
        },
        parity_db::Error::IncompatibleColumnConfig { id, reason } => StoreError::Layout {
            path: path.to_owned(),
            detail: format!("column {id}: {reason}"),
        },
        other => StoreError::Db(other),
    })
}

/// Reads the chain spec stored in the store at `path` (opening the database briefly).
pub fn read_spec(path: &Path) -> Result<ChainSpec, StoreError> {
    if !path.join("metadata").exists() {
        return Err(StoreError::Corrupt(format!(
            "{} is not a syncnode store",
            path.display()
        )));
    }
    let db = open_db(path, parity_db::Db::open_read_only)?;
    let text = db
        .get(COL_META, META_SPEC)?
        .ok_or_else(|| StoreError::Corrupt("the store holds no chain spec".into()))?;
    let text =
        String::from_utf8(text).map_err(|_| StoreError::Corrupt("stored chain spec is not UTF-8".into()))?;
    ChainSpec::from_json(&text).map_err(|e| StoreError::Corrupt(format!("stored chain spec: {e}")))
}

fn cursor_key(name: &str) -> Vec<u8> {
    let mut key = META_CURSOR_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn load_pointer(db: &parity_db::Db, name: &'static [u8]) -> Result<Option<Pointer>, StoreError> {
    db.get(COL_META, name)?
        .map(|v| Pointer::decode(name, &v))
        .transpose()
}

fn load_pointers(db: &parity_db::Db, path: &Path, expected: &Hash) -> Result<Pointers, StoreError> {
    let missing = |name: &[u8]| StoreError::Corrupt(format!("pointer {} is missing", show(name)));
    if let Some(v) = db.get(COL_META, META_SCHEMA)? {
        let version = decode_u64("schema", &v)?;
        if version > u64::from(SCHEMA_VERSION) {
            return Err(StoreError::NewerSchema(
                u32::try_from(version).unwrap_or(u32::MAX),
            ));
        }
        if version != u64::from(SCHEMA_VERSION) {
            return Err(StoreError::Schema(version as u32));
        }
    }
    let genesis = db
        .get(COL_META, META_GENESIS)?
        .ok_or_else(|| missing(META_GENESIS))?;
    let genesis =
        Hash::from_slice(&genesis).map_err(|_| StoreError::Corrupt("genesis is not a hash".into()))?;
    if genesis != *expected {
        return Err(StoreError::WrongChain {
            path: path.to_owned(),
            found: genesis,
            expected: *expected,
        });
    }
    let floor = db
        .get(COL_META, META_FLOOR)?
        .map(|v| decode_u64("history_floor", &v))
        .transpose()?;
    Ok(Pointers {
        genesis,
        head: load_pointer(db, META_HEAD)?.ok_or_else(|| missing(META_HEAD))?,
        finalized: load_pointer(db, META_FINALIZED)?.ok_or_else(|| missing(META_FINALIZED))?,
        low: load_pointer(db, META_LOW)?.ok_or_else(|| missing(META_LOW))?,
        anchor: load_pointer(db, META_ANCHOR)?,
        floor: floor.unwrap_or(0),
    })
}

#[cfg(test)]
mod migrate_tests;
#[cfg(test)]
mod payload_tests;
#[cfg(test)]
mod tests;
