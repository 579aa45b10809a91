//! `syncnode chain spec` and `syncnode chain generate`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use rayon::prelude::*;
use syncnode_store::BlockStore;
use syncnode_types::{Block, BlockHeader, ChainSpec, DevChain};

use crate::cli::{GenerateArgs, SpecArgs};

/// Blocks built, signed and committed per step.
const GENERATE_BATCH: u64 = 4096;

pub fn spec(args: SpecArgs) -> anyhow::Result<ExitCode> {
    let genesis_timestamp_ms = match args.genesis_timestamp_ms {
        Some(t) => t,
        None => now_ms()? / 1000 * 1000,
    };
    let spec = ChainSpec::dev(
        &args.name,
        args.authorities,
        genesis_timestamp_ms,
        args.slot_ms,
        args.finality_depth,
    )?;
    println!("{}", spec.to_json());
    Ok(ExitCode::SUCCESS)
}

pub fn now_ms() -> anyhow::Result<u64> {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(since.as_millis() as u64)
}

/// Reads and validates a chain spec file.
pub fn read_spec(path: &std::path::Path) -> anyhow::Result<ChainSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading chain spec {}", path.display()))?;
    ChainSpec::from_json(&text).with_context(|| format!("chain spec {}", path.display()))
}

/// Builds `count` blocks after `parent`: headers in order (each hashes its parent), signatures in
/// parallel on all cores.
pub fn build_blocks(dev: &DevChain, parent: &BlockHeader, count: u64, payload_bytes: usize) -> Vec<Block> {
    let mut unsigned = Vec::with_capacity(count as usize);
    let mut header = *parent;
    for _ in 0..count {
        let payload = DevChain::payload(header.height + 1, payload_bytes);
        header = dev.header_after(&header, &payload);
        unsigned.push((header, payload));
    }
    unsigned.into_par_iter().map(|(h, p)| dev.seal(h, p)).collect()
}

pub fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let spec = read_spec(&args.chain)?;
    let dev = DevChain::new(&spec)?;
    let (store, report) = BlockStore::open(&args.data_dir, &spec)
        .with_context(|| format!("opening store {}", args.data_dir.display()))?;
    for action in &report.actions {
        eprintln!("repair: {action}");
    }
    let head = store.head();
    let mut parent = store
        .block(&head.hash)?
        .with_context(|| format!("head block {} is missing", head.hash))?
        .header;
    let bar = crate::progress::bar(args.blocks, "generate");
    let started = Instant::now();
    let mut done = 0;
    while done < args.blocks {
        let count = GENERATE_BATCH.min(args.blocks - done);
        let blocks = build_blocks(&dev, &parent, count, args.payload_bytes as usize);
        store.import_blocks(&blocks)?;
        parent = blocks[blocks.len() - 1].header;
        done += count;
        bar.set_position(done);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let head = store.head();
    eprintln!(
        "generated {done} blocks of {} bytes in {secs:.2} s ({:.0} blocks/s); head {} {}",
        args.payload_bytes,
        done as f64 / secs.max(1e-9),
        head.height,
        head.hash
    );
    Ok(ExitCode::SUCCESS)
}
