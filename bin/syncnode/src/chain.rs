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

/// Slots between the default genesis time and now: room for this much generated history whose
/// timestamps all lie in the past (at 1 s slots, genesis about 116 days ago).
pub const DEFAULT_HISTORY_SLOTS: u64 = 10_000_000;

pub fn spec(args: SpecArgs) -> anyhow::Result<ExitCode> {
    let genesis_timestamp_ms = match args.genesis_timestamp_ms {
        Some(t) => t,
        None => default_genesis_ms(now_ms()?, args.slot_ms),
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

/// `DEFAULT_HISTORY_SLOTS` slots before `now_ms`, rounded down to the second.
fn default_genesis_ms(now_ms: u64, slot_ms: u64) -> u64 {
    now_ms.saturating_sub(DEFAULT_HISTORY_SLOTS.saturating_mul(slot_ms)) / 1000 * 1000
}

/// The timestamp `count` generated blocks after `parent` end at: each block takes its slot's time,
/// or 1 ms after its parent's when that is later ([`DevChain::header_after`]); slot times grow by
/// at least 1 ms a height, so the last block's is the later of its slot's and `parent`'s + `count`.
fn last_generated_timestamp_ms(spec: &ChainSpec, parent: &BlockHeader, count: u64) -> u64 {
    let last = parent.height.saturating_add(count);
    spec.slot_timestamp_ms(last)
        .max(parent.timestamp_ms.saturating_add(count))
}

/// Refuses history that would end after `now_ms`: the chain's own nodes refuse a gossiped block
/// more than a few seconds ahead of their clock (rule 6), and a producer stamps its blocks after
/// its parent's, so a head from the future makes every produced block one they refuse.
fn ensure_not_future(spec: &ChainSpec, parent: &BlockHeader, count: u64, now_ms: u64) -> anyhow::Result<()> {
    let last_ms = last_generated_timestamp_ms(spec, parent, count);
    if count == 0 || last_ms <= now_ms {
        return Ok(());
    }
    let ahead_s = (last_ms - now_ms).div_ceil(1000);
    let slots_to_now = now_ms.saturating_sub(spec.genesis_timestamp_ms) / spec.slot_ms.max(1);
    let fits = slots_to_now
        .saturating_sub(parent.height)
        .min(now_ms.saturating_sub(parent.timestamp_ms));
    anyhow::bail!(
        "refusing to generate: block {} would be stamped {ahead_s} s in the future (slot {} ms, \
         genesis {} ms), and nodes of this chain refuse gossip from the future (rule 6), so a \
         producer on top of it would be banned by its peers. Generate at most {fits} blocks now, \
         or write a spec whose genesis lies further back, e.g. `syncnode chain spec ... \
         --genesis-timestamp-ms $(( ($(date +%s) - {}) * 1000 ))` (or leave the option out: \
         the default genesis lies {DEFAULT_HISTORY_SLOTS} slots back)",
        parent.height + count,
        spec.slot_ms,
        spec.genesis_timestamp_ms,
        (parent.height + count)
            .saturating_mul(spec.slot_ms)
            .div_ceil(1000)
            + 60,
    )
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
    ensure_not_future(&spec, &parent, args.blocks, now_ms()?)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_at(genesis_ms: u64) -> ChainSpec {
        ChainSpec::dev("gen", 1, genesis_ms, 1000, 8).expect("spec")
    }

    #[test]
    fn the_default_genesis_leaves_room_for_ten_million_slots_of_past_history() {
        let now = 1_800_000_000_123;
        let genesis = default_genesis_ms(now, 1000);
        assert_eq!(genesis % 1000, 0);
        assert!(now - genesis >= DEFAULT_HISTORY_SLOTS * 1000);
        assert!(now - genesis < DEFAULT_HISTORY_SLOTS * 1000 + 1000);
        assert_eq!(default_genesis_ms(5_000, 1000), 0, "saturates at the epoch");
    }

    #[test]
    fn the_last_timestamp_is_what_generation_stamps() {
        let spec = spec_at(1_000_000);
        let dev = DevChain::new(&spec).expect("dev");
        let genesis = spec.genesis().header;
        let blocks = build_blocks(&dev, &genesis, 50, 0);
        assert_eq!(
            last_generated_timestamp_ms(&spec, &genesis, 50),
            blocks[49].header.timestamp_ms
        );
        // A parent stamped after its slot (a produced block): 1 ms per block after it.
        let mut late = blocks[49].header;
        late.timestamp_ms = spec.slot_timestamp_ms(50) + 500_000;
        let after = build_blocks(&dev, &late, 20, 0);
        assert_eq!(
            last_generated_timestamp_ms(&spec, &late, 20),
            after[19].header.timestamp_ms
        );
    }

    #[test]
    fn history_ending_after_now_is_refused_with_the_fix() {
        let now = 1_800_000_000_000;
        let spec = spec_at(now - 100_000);
        let genesis = spec.genesis().header;
        ensure_not_future(&spec, &genesis, 100, now).expect("100 slots end now");
        let err = ensure_not_future(&spec, &genesis, 1_000, now).expect_err("900 s ahead");
        let text = err.to_string();
        assert!(
            text.contains("block 1000 would be stamped 900 s in the future"),
            "{text}"
        );
        assert!(text.contains("at most 100 blocks"), "{text}");
        assert!(text.contains("--genesis-timestamp-ms"), "{text}");
    }
}
