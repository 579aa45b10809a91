//! `syncnode db check`, `db export` and `db repair`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use syncnode_proto::{encode_frame, pb};
use syncnode_store::{BlockStore, Pointers, StoreConfig, StoreError};

use crate::cli::{DataDirArgs, ExportArgs};

pub(crate) fn open(dir: &Path, repair: bool) -> anyhow::Result<(BlockStore, syncnode_store::RepairReport)> {
    anyhow::ensure!(
        dir.is_dir(),
        "no store at {}: there is no such directory",
        dir.display()
    );
    let config = StoreConfig {
        repair_on_open: repair,
        ..StoreConfig::default()
    };
    match BlockStore::open_existing(dir, config) {
        Ok(opened) => Ok(opened),
        Err(StoreError::Db(parity_db::Error::Locked(_))) => anyhow::bail!(
            "the store in {} is in use by a running node: stop the node first",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("opening store {}", dir.display())),
    }
}

/// The heights `db export` writes: `[from, to]` checked against what the store holds before
/// anything is written (`to` beyond the head is cut to the head).
fn export_range(p: &Pointers, from: Option<u64>, to: Option<u64>) -> anyhow::Result<(u64, u64)> {
    let (low, head) = (p.low.height, p.head.height);
    let from = from.unwrap_or(low);
    let to = to.unwrap_or(head).min(head);
    anyhow::ensure!(
        from >= low,
        "--from {from} is below the earliest height this store holds: it holds {low}..={head}"
    );
    anyhow::ensure!(
        from <= to,
        "--from {from} is above --to or the head: this store holds {low}..={head}"
    );
    Ok((from, to))
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
    let (from, to) = export_range(&store.pointers(), args.from, args.to)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use syncnode_types::{ChainSpec, DevChain};

    fn store_with(dir: &Path, blocks: u64) -> BlockStore {
        let spec = ChainSpec::dev("db", 1, 1_000_000, 1000, 4).expect("spec");
        let chain = DevChain::new(&spec)
            .expect("dev")
            .extend(&spec.genesis().header, blocks, 8);
        let (store, _) = BlockStore::open(dir, &spec).expect("open");
        store.import_blocks(&chain).expect("import");
        store
    }

    #[test]
    fn a_missing_directory_and_a_store_in_use_are_said_once_and_plainly() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("nowhere");
        let err = format!("{:#}", open(&missing, false).err().expect("missing"));
        assert!(err.contains("there is no such directory"), "{err}");
        assert!(!err.contains("corrupt"), "{err}");
        let data = dir.path().join("store");
        let _running = store_with(&data, 10);
        let err = format!("{:#}", open(&data, false).err().expect("locked"));
        assert_eq!(
            err,
            format!(
                "the store in {} is in use by a running node: stop the node first",
                data.display()
            )
        );
    }

    #[test]
    fn an_export_range_outside_the_store_is_refused_before_writing() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store_with(dir.path(), 300);
        store.prune_below(100).expect("prune");
        let p = store.pointers();
        assert_eq!(export_range(&p, None, None).expect("all"), (100, 300));
        assert_eq!(export_range(&p, Some(150), Some(900)).expect("cut"), (150, 300));
        let below = export_range(&p, Some(0), None).expect_err("below").to_string();
        assert!(below.contains("holds 100..=300"), "{below}");
        let above = export_range(&p, Some(301), None).expect_err("above").to_string();
        assert!(above.contains("above"), "{above}");
        assert!(export_range(&p, Some(200), Some(150)).is_err());
    }
}
