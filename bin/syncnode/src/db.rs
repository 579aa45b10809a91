//! `syncnode db check`, `db export` and `db repair`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use syncnode_proto::{encode_frame, pb};
use syncnode_store::{BlockStore, StoreConfig};

use crate::cli::{DataDirArgs, ExportArgs};

fn open(dir: &std::path::Path, repair: bool) -> anyhow::Result<(BlockStore, syncnode_store::RepairReport)> {
    let config = StoreConfig {
        repair_on_open: repair,
        ..StoreConfig::default()
    };
    BlockStore::open_existing(dir, config).with_context(|| format!("opening store {}", dir.display()))
}

pub fn check(args: DataDirArgs) -> anyhow::Result<ExitCode> {
    let (store, look) = open(&args.data_dir, false)?;
    let p = store.pointers();
    let bar = crate::progress::bar(p.head.height - p.low.height + 1, "check");
    let started = Instant::now();
    let report = store.verify_chain(|done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!("chain      {} (genesis {})", store.spec().name, p.genesis);
    println!("head       {} {}", p.head.height, p.head.hash);
    println!("finalized  {} {}", p.finalized.height, p.finalized.hash);
    println!("earliest   {} {}", p.low.height, p.low.hash);
    if let Some(anchor) = p.anchor {
        println!("checkpoint {} {}", anchor.height, anchor.hash);
    }
    println!(
        "checked    {} blocks, {} payload bytes in {secs:.2} s ({:.0} blocks/s)",
        report.blocks,
        report.payload_bytes,
        report.blocks as f64 / secs.max(1e-9)
    );
    for action in &look.actions {
        println!("needs repair: {action}");
    }
    for fault in &report.faults {
        println!("FAULT at {}: {}", fault.height, fault.what);
    }
    if report.is_ok() && look.is_clean() {
        println!("ok");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: {} faults", report.faults.len() + look.actions.len());
        Ok(ExitCode::from(1))
    }
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (store, _) = open(&args.data_dir, false)?;
    let p = store.pointers();
    let from = args.from.unwrap_or(p.low.height);
    let to = args.to.unwrap_or(p.head.height).min(p.head.height);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let started = Instant::now();
    let mut count = 0u64;
    for height in from..=to {
        let block = store
            .block_at(height)?
            .with_context(|| format!("no canonical block at height {height}"))?;
        out.write_all(&encode_frame(&pb::Block::from(&block)))?;
        count += 1;
    }
    out.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {count} blocks ({from}..={to}) in {secs:.2} s ({:.0} blocks/s)",
        count as f64 / secs.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

pub fn repair(args: DataDirArgs) -> anyhow::Result<ExitCode> {
    let (store, report) = open(&args.data_dir, true)?;
    if report.is_clean() {
        println!("checked {} recent blocks: nothing to repair", report.checked);
    }
    for action in &report.actions {
        println!("repaired: {action}");
    }
    let p = store.pointers();
    println!(
        "head {} {}, finalized {}, earliest {}",
        p.head.height, p.head.hash, p.finalized.height, p.low.height
    );
    Ok(ExitCode::SUCCESS)
}
