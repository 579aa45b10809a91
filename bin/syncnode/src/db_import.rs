//! `syncnode db import`: blocks from what `db export` wrote, verified as sync verifies them.
//!
//! A reader thread decodes the frames, drops the blocks the store already holds as canonical
//! (so a run after a kill continues from the store's head), and batch-verifies rules 3–5 of each
//! batch with the node's verifier ([`syncnode_node::verify::verify_parallel`]); the calling
//! thread imports the verified batches in order through the store's import path, which checks
//! the links and finality. The two overlap through a channel of [`QUEUED_BATCHES`]. At the first
//! bad block the blocks before it are imported and nothing after it.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use anyhow::Context;
use prost::Message;
use syncnode_proto::pb;
use syncnode_store::{BlockStore, StoreConfig, StoreError};
use syncnode_types::{BatchError, Block, ChainSpec};

use crate::cli::ImportArgs;

/// Most blocks verified and imported together (as the node's importer commits).
const BATCH_BLOCKS: usize = 1024;
/// Most bytes of blocks in a batch.
const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Verified batches waiting for the store.
const QUEUED_BATCHES: usize = 2;
/// Largest frame taken from the file: a block response's bound, far above any valid block.
const MAX_FRAME: usize = syncnode_proto::MAX_RESPONSE_FRAME;

/// A batch of consecutive frames: their blocks, the frame number of the first, and the result of
/// their verification.
struct Batch {
    blocks: Vec<Block>,
    first_frame: u64,
    verified: Result<(), BatchError>,
    /// Bytes of the input read so far, for the progress bar.
    input_bytes: u64,
}

/// What the reader sends: a batch, or why reading stopped.
type Item = anyhow::Result<Batch>;

pub fn import(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let store = Arc::new(open_store(&args.data_dir, args.chain.as_deref())?);
    let (input, size) = open_input(&args.file)?;
    let start_head = store.head();
    let bar = match size {
        Some(bytes) => crate::progress::bar(bytes, "import"),
        None => crate::progress::bytes_counter("import"),
    };
    let (tx, rx) = sync_channel::<Item>(QUEUED_BATCHES);
    let reader = {
        let store = store.clone();
        let threads = resolve_threads(args.verify_threads);
        std::thread::Builder::new()
            .name("import-read".into())
            .spawn(move || read_and_verify(input, &store, threads, &tx))?
    };
    let started = Instant::now();
    let result = import_batches(&store, &rx, &bar);
    drop(rx);
    let _ = reader.join();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let head = store.head();
    let imported = result?;
    eprintln!(
        "imported {imported} blocks in {secs:.2} s ({:.0} blocks/s); head {} -> {} {}, finalized {}",
        imported as f64 / secs.max(1e-9),
        start_head.height,
        head.height,
        head.hash,
        store.pointers().finalized.height
    );
    Ok(ExitCode::SUCCESS)
}

fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The store in `dir`: opened when it exists (it must then be of the chain `--chain` names, if
/// given), created with `--chain` when it does not.
fn open_store(dir: &Path, chain: Option<&Path>) -> anyhow::Result<BlockStore> {
    let exists = dir.join("metadata").exists();
    let (store, report) = match (exists, chain) {
        (true, None) => crate::db::open(dir, true)?,
        (_, Some(chain)) => {
            let spec: ChainSpec = crate::chain::read_spec(chain)?;
            BlockStore::open_with(dir, &spec, StoreConfig::default()).map_err(|e| locked_or(e, dir))?
        }
        (false, None) => anyhow::bail!(
            "no store in {}: give --chain SPEC to create one for the blocks",
            dir.display()
        ),
    };
    for action in &report.actions {
        eprintln!("repaired: {action}");
    }
    Ok(store)
}

fn locked_or(e: StoreError, dir: &Path) -> anyhow::Error {
    match e {
        StoreError::Db(parity_db::Error::Locked(_)) => anyhow::anyhow!(
            "the store in {} is in use by a running node: stop the node first",
            dir.display()
        ),
        other => anyhow::Error::new(other).context(format!("opening store {}", dir.display())),
    }
}

/// The input and its size when it is a file (`-`: standard input, size unknown).
fn open_input(file: &Path) -> anyhow::Result<(Box<dyn BufRead + Send>, Option<u64>)> {
    if file == Path::new("-") {
        return Ok((
            Box::new(BufReader::with_capacity(1 << 20, std::io::stdin())),
            None,
        ));
    }
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let size = f.metadata().map(|m| m.len()).ok();
    Ok((Box::new(BufReader::with_capacity(1 << 20, f)), size))
}

/// The reader thread: frames to verified batches, until the input ends, a frame is bad, or the
/// importer stops listening.
fn read_and_verify(
    mut input: Box<dyn BufRead + Send>,
    store: &BlockStore,
    threads: usize,
    tx: &SyncSender<Item>,
) {
    let mut frames = Frames::default();
    loop {
        let batch = match next_batch(&mut input, &mut frames, store) {
            Ok(Some(blocks)) => blocks,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        let verified = syncnode_node::verify::verify_parallel(&batch.0, store.spec(), threads);
        let item = Batch {
            blocks: batch.0,
            first_frame: batch.1,
            verified,
            input_bytes: frames.bytes,
        };
        if tx.send(Ok(item)).is_err() {
            return;
        }
    }
}

/// Where the reader is in the input.
#[derive(Default)]
struct Frames {
    /// Frames read.
    count: u64,
    /// Bytes read.
    bytes: u64,
    /// Whether a block the store did not hold as canonical has been seen: from then on every
    /// block goes to the store.
    past_known: bool,
}

/// The next batch of blocks the store does not already hold as canonical, and the frame number
/// of its first; `None` at the end of the input.
fn next_batch(
    input: &mut dyn BufRead,
    frames: &mut Frames,
    store: &BlockStore,
) -> anyhow::Result<Option<(Vec<Block>, u64)>> {
    let mut blocks = Vec::new();
    let mut bytes = 0usize;
    let mut first_frame = frames.count;
    while blocks.len() < BATCH_BLOCKS && bytes < BATCH_BYTES {
        let frame = frames.count;
        let Some(raw) = read_frame(input, frame)? else {
            break;
        };
        frames.count += 1;
        frames.bytes += raw.1 as u64;
        let block = decode_block(&raw.0).with_context(|| format!("frame {frame} of the input"))?;
        if !frames.past_known {
            if is_canonical(store, &block)? {
                first_frame = frames.count;
                continue;
            }
            frames.past_known = true;
        }
        bytes += raw.0.len();
        blocks.push(block);
    }
    Ok((!blocks.is_empty()).then_some((blocks, first_frame)))
}

fn is_canonical(store: &BlockStore, block: &Block) -> anyhow::Result<bool> {
    if block.height() > store.head().height {
        return Ok(false);
    }
    Ok(store.hash_at(block.height())? == Some(block.hash()))
}

fn decode_block(bytes: &[u8]) -> anyhow::Result<Block> {
    let msg = pb::Block::decode(bytes).context("not a protobuf Block")?;
    Block::try_from(msg).map_err(|e| anyhow::anyhow!("malformed block: {e}"))
}

/// One varint-length-prefixed frame (as `encode_frame` writes): its bytes and how many bytes it
/// took from the input; `None` at a clean end of the input.
fn read_frame(input: &mut dyn BufRead, frame: u64) -> anyhow::Result<Option<(Vec<u8>, usize)>> {
    let mut len: u64 = 0;
    let mut prefix = 0usize;
    loop {
        let mut byte = [0u8; 1];
        match input.read(&mut byte) {
            Ok(0) if prefix == 0 => return Ok(None),
            Ok(0) => anyhow::bail!("frame {frame} of the input: the input ends inside its length"),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the input"),
        }
        anyhow::ensure!(
            prefix < 10,
            "frame {frame} of the input: its length is not a varint"
        );
        len |= u64::from(byte[0] & 0x7f) << (7 * prefix);
        prefix += 1;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    anyhow::ensure!(
        len <= MAX_FRAME as u64,
        "frame {frame} of the input: {len} bytes, over the {MAX_FRAME}-byte bound"
    );
    let mut buf = vec![0u8; len as usize];
    input
        .read_exact(&mut buf)
        .with_context(|| format!("frame {frame} of the input: the input ends inside it"))?;
    Ok(Some((buf, prefix + len as usize)))
}

/// Imports the verified batches in order; returns how many blocks went to the store.
fn import_batches(
    store: &BlockStore,
    rx: &Receiver<Item>,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let mut imported = 0u64;
    for item in rx {
        let batch = item?;
        bar.set_position(batch.input_bytes);
        let good = match &batch.verified {
            Ok(()) => batch.blocks.len(),
            Err(e) => e.index,
        };
        if good > 0 {
            store
                .import_blocks(&batch.blocks[..good])
                .map_err(|e| name_store_error(e, &batch))?;
            imported += good as u64;
        }
        if let Err(e) = &batch.verified {
            let block = &batch.blocks[e.index];
            anyhow::bail!(
                "block {} at height {} (frame {} of the input) breaks rule {}: {}; nothing from it \
                 on was imported, the store's head is {}",
                block.hash(),
                block.height(),
                batch.first_frame + e.index as u64,
                e.error.rule(),
                e.error,
                store.head().height
            );
        }
    }
    Ok(imported)
}

/// A store error on a batch, naming the block it is about.
fn name_store_error(e: StoreError, batch: &Batch) -> anyhow::Error {
    let index = match &e {
        StoreError::Invalid { index, .. } => Some(*index),
        _ => None,
    };
    match index.and_then(|i| batch.blocks.get(i).map(|b| (i, b))) {
        Some((i, block)) => anyhow::anyhow!(
            "block {} at height {} (frame {} of the input) does not link: {e}; nothing from it on \
             was imported",
            block.hash(),
            block.height(),
            batch.first_frame + i as u64
        ),
        None => anyhow::Error::new(e).context(format!(
            "importing the blocks of frames {}..{} of the input; nothing from them on was imported",
            batch.first_frame,
            batch.first_frame + batch.blocks.len() as u64
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_proto::encode_frame;

    #[test]
    fn frames_end_cleanly_or_are_named_when_cut_or_oversized() {
        let one = encode_frame(&pb::Block {
            payload: bytes::Bytes::from_static(b"payload"),
            ..Default::default()
        });
        let mut two = one.clone();
        two.extend_from_slice(&one);
        let mut input = &two[..];
        assert_eq!(
            read_frame(&mut input, 0).expect("first").expect("frame").1,
            one.len()
        );
        assert!(read_frame(&mut input, 1).expect("second").is_some());
        assert!(read_frame(&mut input, 2).expect("end").is_none());

        let mut cut = &two[..two.len() - 1];
        read_frame(&mut cut, 0).expect("first");
        let err = read_frame(&mut cut, 1).expect_err("cut").to_string();
        assert_eq!(err, "frame 1 of the input: the input ends inside it");

        let mut huge = Vec::new();
        prost::encoding::encode_varint(MAX_FRAME as u64 + 1, &mut huge);
        let err = read_frame(&mut &huge[..], 7).expect_err("huge").to_string();
        assert!(
            err.starts_with("frame 7 of the input: 16777217 bytes, over the"),
            "{err}"
        );
        let err = read_frame(&mut &[0x80u8][..], 3)
            .expect_err("torn length")
            .to_string();
        assert_eq!(err, "frame 3 of the input: the input ends inside its length");
    }
}
