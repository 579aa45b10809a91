//! `syncnode-bench`: how fast syncnode syncs, against the limits of this machine, in one run.
//!
//! It generates chains with `syncnode chain generate`, measures the pipeline's stages in this
//! process on the same blocks (verification on the node's pool, the store's import path, the
//! libp2p transport between two swarms) and then runs real `syncnode run` processes on loopback:
//! one seeder to one fresh node for 1 KiB and 64 KiB blocks, four rate-limited seeders against
//! one, backfill from a checkpoint, memory scaling, restart time, and serving to four clients.
//! Every figure lands in one Markdown table (stdout and `OUT/results.md`) and the head height
//! over time of every sync in `OUT/sync.png`. `--quick` runs the same at smaller sizes.

#![forbid(unsafe_code)]

mod cgroup;
mod limits;
mod proc;
mod report;
mod scenarios;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use syncnode_types::ChainSpec;

use crate::limits::Limits;
use crate::proc::{Env, NodeProc, Run};
use crate::report::{Row, int, mb_s, mib};
use crate::scenarios::{Bench, Chain, remove_store};

/// Measures sync speed, memory and serving against the machine's limits.
#[derive(Debug, Parser)]
struct Args {
    /// Smaller sizes (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Only section 7: 5,000,000 blocks synced inside a 256 MiB memory cgroup.
    #[arg(long, conflicts_with = "quick")]
    cgroup_only: bool,
    /// The release `syncnode` binary.
    #[arg(long, default_value = "target/release/syncnode")]
    bin: PathBuf,
    /// Where results.md, sync.png and the nodes' logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Directory for chains and stores [default: a temporary directory, removed at the end].
    #[arg(long)]
    work: Option<PathBuf>,
}

/// The sizes of one mode.
struct Sizes {
    a: u64,
    b: u64,
    sample_a: u64,
    sample_b: u64,
    paced_chain: u64,
    paced_rate: u32,
    mem_big: u64,
    mem_small: u64,
}

const FULL: Sizes = Sizes {
    a: 200_000,
    b: 20_000,
    sample_a: 50_000,
    sample_b: 4_000,
    paced_chain: 100_000,
    paced_rate: 2_500,
    mem_big: 1_000_000,
    mem_small: 100_000,
};

const QUICK: Sizes = Sizes {
    a: 80_000,
    b: 3_000,
    sample_a: 20_000,
    sample_b: 1_500,
    paced_chain: 16_000,
    paced_rate: 1_000,
    mem_big: 100_000,
    mem_small: 10_000,
};

const MIB_256: u64 = 256 * 1024 * 1024;

/// The rows of the table and the curves of the plot, filled section by section.
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    plots: Vec<(String, Vec<(f64, u64)>)>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = if args.quick { QUICK } else { FULL };
    anyhow::ensure!(
        args.bin.exists(),
        "{} not found: build it with `cargo build --release -p syncnode`",
        args.bin.display()
    );
    std::fs::create_dir_all(&args.out)?;
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let tmp = tempfile::Builder::new().prefix("syncnode-bench").tempdir()?;
    let work = args.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let env = Env {
        bin: args.bin.canonicalize()?,
        logs,
    };
    let load_before = loadavg();
    let started = std::time::Instant::now();
    let bench = bench_with_spec(env, &work, &sizes)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut results = Results::default();
    if args.cgroup_only {
        cgroup::section(&bench, &mut results.rows, &mut results.plots)?;
        return write_report(&args, &results, &load_before, started);
    }

    // 1. Limits, on the blocks of chains (a) and (b).
    let (a, lim_a, b, lim_b) = limits_section(&bench, &runtime, &sizes, &mut results)?;
    // 2a, 4, 6: forward sync, backfill and serving on chain (a).
    chain_a_section(&bench, &runtime, &a, &lim_a, &mut results)?;
    // 2b: 64 KiB blocks.
    chain_b_section(&bench, &b, &lim_b, &mut results)?;
    // 3: four rate-limited seeders against one.
    paced_section(&bench, &sizes, &mut results)?;
    // 5: memory scaling, and a restart on the large store.
    memory_section(&bench, &sizes, &mut results)?;
    remove_chain(&a);
    // 7: the largest chain inside a memory limit (full mode only).
    if !args.quick {
        cgroup::section(&bench, &mut results.rows, &mut results.plots)?;
    }
    write_report(&args, &results, &load_before, started)
}

/// The table on stdout and in `OUT/results.md`, the plot in `OUT/sync.png`.
fn write_report(
    args: &Args,
    results: &Results,
    load_before: &str,
    started: std::time::Instant,
) -> anyhow::Result<()> {
    let heading = format!(
        "## syncnode-bench{} — {}\n\n{}; load average {} at start, {} at end; {:.0} s",
        if args.quick { " --quick" } else { "" },
        chrono_like_now()?,
        machine(),
        load_before,
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    let table = report::markdown(&heading, &results.rows, args.quick);
    println!("{table}");
    std::fs::write(args.out.join("results.md"), &table)?;
    report::plot(&args.out.join("sync.png"), &results.plots).context("drawing the plot")?;
    eprintln!(
        "wrote {} and {}",
        args.out.join("results.md").display(),
        args.out.join("sync.png").display()
    );
    Ok(())
}

/// One spec for every chain (four authorities, history ending an hour before now), written to
/// `work`, and the scenarios on it.
fn bench_with_spec(env: Env, work: &std::path::Path, sizes: &Sizes) -> anyhow::Result<Bench> {
    let genesis_ms = (now_s()? - sizes.mem_big.max(sizes.a).max(cgroup::CGROUP_BLOCKS) - 3600) * 1000;
    let spec_json = env.run_ok(&[
        "chain",
        "spec",
        "--name",
        "bench",
        "--authorities",
        "4",
        "--slot-ms",
        "1000",
        "--genesis-timestamp-ms",
        &genesis_ms.to_string(),
    ])?;
    let spec_path = work.join("spec.json");
    std::fs::write(&spec_path, &spec_json)?;
    let spec = ChainSpec::from_json(&spec_json)?;
    Ok(Bench {
        env,
        spec_path,
        spec,
        work: work.to_path_buf(),
    })
}

/// Section 1: generates chains (a) and (b) and measures each stage's limit on their blocks.
fn limits_section(
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    sizes: &Sizes,
    results: &mut Results,
) -> anyhow::Result<(Chain, Limits, Chain, Limits)> {
    eprintln!("generating chains (a) and (b)");
    let (a, gen_a) = bench.generate("a", sizes.a, 1024)?;
    let (b, _) = bench.generate("b", sizes.b, 65_536)?;
    results.rows.push(Row::new(
        "–",
        format!("generate (a): {} blocks of 1 KiB", int(a.blocks as f64)),
        format!("{} blocks/s", int(a.blocks as f64 / gen_a)),
    ));
    eprintln!("measuring limits");
    let lim_a = runtime.block_on(limits::measure(
        &bench.spec,
        limits::load_blocks(&a.store, &bench.spec, sizes.sample_a.min(a.blocks))?,
        &bench.work,
    ))?;
    let lim_b = runtime.block_on(limits::measure(
        &bench.spec,
        limits::load_blocks(&b.store, &bench.spec, sizes.sample_b.min(b.blocks))?,
        &bench.work,
    ))?;
    limit_rows(&mut results.rows, "1 KiB", &lim_a);
    limit_rows(&mut results.rows, "64 KiB", &lim_b);
    Ok((a, lim_a, b, lim_b))
}

/// Sections 2a, 4 and 6: forward sync, backfill and serving on chain (a).
fn chain_a_section(
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    a: &Chain,
    lim_a: &Limits,
    results: &mut Results,
) -> anyhow::Result<()> {
    let work = &bench.work;
    eprintln!("sync (a)");
    let seeder = bench.seeder(a, "seeder-a", &[])?;
    let (fwd_a, node) = bench.sync_fresh(a, std::slice::from_ref(&seeder), "fresh-a")?;
    drop(node);
    remove_store(work, "fresh-a");
    sync_rows(&mut results.rows, "2a", a, &fwd_a, lim_a, 30_000.0, None, 0.5);
    results.plots.push((
        format!("(a) {} x 1 KiB", int(a.blocks as f64)),
        fwd_a.samples.clone(),
    ));

    eprintln!("backfill (a)");
    let back = bench.backfill(a, &seeder, "backfill-a")?;
    remove_store(work, "backfill-a");
    let ratio = back.blocks_per_sec() / fwd_a.blocks_per_sec();
    results.rows.push(
        Row::new(
            "4",
            format!("backfill (a) from a checkpoint at {}", int(a.blocks as f64)),
            format!("{} blocks/s = {ratio:.2} × forward", int(back.blocks_per_sec())),
        )
        .target("≥ 0.8 × forward", ratio >= 0.8),
    );
    rss_check(&mut results.rows, "4", "backfill (a)", &back);

    eprintln!("serving (a) to four clients");
    let served = runtime.block_on(bench.serve_four(a, &seeder))?;
    results.rows.push(Row::new(
        "6",
        "one node serving (a) to 4 concurrent clients (in-process, no verification)",
        format!("{} blocks/s", int(served)),
    ));
    drop(seeder);
    remove_store(work, "seeder-a");
    Ok(())
}

/// Section 2b: forward sync of 64 KiB blocks; removes chain (b) after.
fn chain_b_section(bench: &Bench, b: &Chain, lim_b: &Limits, results: &mut Results) -> anyhow::Result<()> {
    eprintln!("sync (b)");
    let seeder = bench.seeder(b, "seeder-b", &[])?;
    let (fwd_b, node) = bench.sync_fresh(b, std::slice::from_ref(&seeder), "fresh-b")?;
    drop((node, seeder));
    remove_store(&bench.work, "fresh-b");
    remove_store(&bench.work, "seeder-b");
    sync_rows(&mut results.rows, "2b", b, &fwd_b, lim_b, 0.0, Some(150e6), 0.7);
    results.plots.push((
        format!("(b) {} x 64 KiB", int(b.blocks as f64)),
        fwd_b.samples.clone(),
    ));
    remove_chain(b);
    Ok(())
}

/// Section 3: one rate-limited seeder against four.
fn paced_section(bench: &Bench, sizes: &Sizes, results: &mut Results) -> anyhow::Result<()> {
    eprintln!("rate-limited seeders");
    let (p, _) = bench.generate("paced", sizes.paced_chain, 1024)?;
    let rate = vec!["--serve-blocks-per-sec".to_string(), sizes.paced_rate.to_string()];
    let one = {
        let s = bench.seeder(&p, "paced-1", &rate)?;
        let (run, node) = bench.sync_fresh(&p, std::slice::from_ref(&s), "fresh-paced-1")?;
        drop((node, s));
        run
    };
    let mut seeders = Vec::new();
    for i in 1..=4 {
        seeders.push(bench.seeder(&p, &format!("paced-4-{i}"), &rate)?);
    }
    let (four, node) = bench.sync_fresh(&p, &seeders, "fresh-paced-4")?;
    drop((node, seeders));
    // From 40% of the chain on: four seeders' one-second bursts are a fifth of the quick chain.
    let (one_rate, four_rate) = (one.steady_blocks_per_sec(0.4), four.steady_blocks_per_sec(0.4));
    let speedup = four_rate / one_rate;
    results.rows.push(
        Row::new(
            "3",
            format!(
                "{} × 1 KiB from seeders capped at {} blocks/s each",
                int(p.blocks as f64),
                int(f64::from(sizes.paced_rate))
            ),
            format!(
                "one: {} blocks/s; four: {} blocks/s (past 40% of the chain; whole run {} and {}); {speedup:.2} ×",
                int(one_rate),
                int(four_rate),
                int(one.blocks_per_sec()),
                int(four.blocks_per_sec())
            ),
        )
        .target("four ≥ 3.5 × one", speedup >= 3.5),
    );
    results
        .plots
        .push(("(3) one capped seeder".into(), one.samples.clone()));
    results
        .plots
        .push(("(3) four capped seeders".into(), four.samples.clone()));
    for name in [
        "paced-1",
        "paced-4-1",
        "paced-4-2",
        "paced-4-3",
        "paced-4-4",
        "fresh-paced-1",
        "fresh-paced-4",
    ] {
        remove_store(&bench.work, name);
    }
    remove_chain(&p);
    Ok(())
}

/// Section 5: peak RSS syncing a small and a large chain of 256 B blocks, and a restart on the
/// large store.
fn memory_section(bench: &Bench, sizes: &Sizes, results: &mut Results) -> anyhow::Result<()> {
    eprintln!("memory scaling");
    let mut mem = Vec::new();
    for (name, n) in [("m-small", sizes.mem_small), ("m-big", sizes.mem_big)] {
        let (chain, _) = bench.generate(name, n, 256)?;
        let seeder = bench.seeder(&chain, &format!("seeder-{name}"), &[])?;
        let fresh = format!("fresh-{name}");
        let (run, node) = bench.sync_fresh(&chain, std::slice::from_ref(&seeder), &fresh)?;
        drop(seeder);
        results
            .plots
            .push((format!("(5) {} x 256 B", int(n as f64)), run.samples.clone()));
        results.rows.push(Row::new(
            "5",
            format!("sync {} × 256 B", int(n as f64)),
            format!(
                "{} blocks/s; CPU {:.0}% of a core",
                int(run.blocks_per_sec()),
                run.cpu_percent()
            ),
        ));
        rss_check(
            &mut results.rows,
            "5",
            &format!("{} × 256 B", int(n as f64)),
            &run,
        );
        import_row(bench, &chain, run.blocks_per_sec(), results)?;
        if name == "m-big" {
            restart_row(bench, node, n, results)?;
        } else {
            drop(node);
        }
        remove_store(&bench.work, &fresh);
        remove_store(&bench.work, &format!("seeder-{name}"));
        remove_chain(&chain);
        mem.push(run.peak_rss);
    }
    let rss_ratio = mem[1] as f64 / (mem[0] as f64).max(1.0);
    results.rows.push(
        Row::new(
            "5",
            format!(
                "peak RSS {} / {} blocks",
                int(sizes.mem_big as f64),
                int(sizes.mem_small as f64)
            ),
            format!("{rss_ratio:.2}"),
        )
        .target("≤ 1.2", rss_ratio <= 1.2),
    );
    Ok(())
}

/// `db import` of an export of `chain`, next to the sync of the same chain from a local peer.
fn import_row(bench: &Bench, chain: &Chain, sync_rate: f64, results: &mut Results) -> anyhow::Result<()> {
    eprintln!("import of {}", chain.name);
    let rate = bench.import(chain, &format!("import-{}", chain.name))?;
    let ratio = rate / sync_rate.max(1e-9);
    results.rows.push(
        Row::new(
            "5",
            format!(
                "`db import` of the export of the same {} × 256 B",
                int(chain.blocks as f64)
            ),
            format!("{} blocks/s = {ratio:.2} × the sync", int(rate)),
        )
        .target("≥ 1 × the sync", ratio >= 1.0),
    );
    Ok(())
}

/// How long the synced `node` of `blocks` blocks takes, restarted, until /status answers.
fn restart_row(bench: &Bench, node: NodeProc, blocks: u64, results: &mut Results) -> anyhow::Result<()> {
    let (secs, restarted) = bench.restart(node, "restart-m-big")?;
    results.rows.push(
        Row::new(
            "5",
            format!(
                "restart on the {}-block store: /status answers after",
                int(blocks as f64)
            ),
            format!("{secs:.2} s"),
        )
        .target("≤ 1 s", secs <= 1.0),
    );
    drop(restarted);
    Ok(())
}

fn limit_rows(rows: &mut Vec<Row>, label: &str, l: &Limits) {
    let n = int(l.sample_blocks as f64);
    let line = |r: limits::Rate| format!("{} blocks/s, {}", int(r.blocks_per_sec), mb_s(r.bytes_per_sec));
    rows.push(Row::new(
        "1",
        format!("{label}: verify rules 3–5, batch (ZIP-215), all cores, {n} blocks"),
        line(l.verify_batch),
    ));
    rows.push(Row::new(
        "1",
        format!("{label}: verify rules 3–5, one by one, all cores"),
        line(l.verify_single),
    ));
    rows.push(Row::new(
        "1",
        format!(
            "{label}: store import, commits of up to {} blocks / {} MiB (the importer's grouping)",
            syncnode_node::import::MERGE_MAX_BLOCKS,
            syncnode_node::import::MERGE_MAX_BYTES >> 20
        ),
        line(l.import),
    ));
    rows.push(Row::new(
        "1",
        format!("{label}: transport, two swarms, TCP+Noise+Yamux"),
        line(l.transport),
    ));
    rows.push(Row::new(
        "1",
        format!("{label}: **pipeline limit** (slowest stage: {})", l.bottleneck()),
        line(l.pipeline()),
    ));
}

#[allow(clippy::too_many_arguments)]
fn sync_rows(
    rows: &mut Vec<Row>,
    section: &'static str,
    chain: &Chain,
    run: &Run,
    l: &Limits,
    min_blocks: f64,
    min_bytes: Option<f64>,
    min_ratio: f64,
) {
    let bytes_per_block = l.verify_batch.bytes_per_sec / l.verify_batch.blocks_per_sec.max(1e-9);
    let bps = run.blocks_per_sec();
    let bytes = bps * bytes_per_block;
    let ratio = bps / l.pipeline().blocks_per_sec.max(1e-9);
    let what = format!(
        "sync {} × {} B, one seeder → one fresh node",
        int(chain.blocks as f64),
        chain.payload
    );
    let result = format!(
        "{} blocks/s, {} in {:.1} s; CPU {:.0}% of a core",
        int(bps),
        mb_s(bytes),
        run.seconds,
        run.cpu_percent()
    );
    match min_bytes {
        Some(m) => rows.push(Row::new(section, what, result).target(format!("≥ {}", mb_s(m)), bytes >= m)),
        None => rows.push(
            Row::new(section, what, result)
                .target(format!("≥ {} blocks/s", int(min_blocks)), bps >= min_blocks),
        ),
    }
    rows.push(
        Row::new(section, "… ratio to the pipeline limit", format!("{ratio:.2}"))
            .target(format!("≥ {min_ratio}"), ratio >= min_ratio),
    );
    rss_check(rows, section, "… syncing node", run);
}

fn rss_check(rows: &mut Vec<Row>, section: &'static str, what: &str, run: &Run) {
    rows.push(
        Row::new(
            section,
            format!("{what}: peak RSS (VmHWM)"),
            format!(
                "{} (at the end: anon {}, file {})",
                mib(run.peak_rss as f64),
                mib(run.anon_rss as f64),
                mib(run.file_rss as f64)
            ),
        )
        .target("≤ 256 MiB", run.peak_rss <= MIB_256),
    );
}

fn remove_chain(chain: &Chain) {
    let _ = std::fs::remove_dir_all(&chain.store);
}

fn now_s() -> anyhow::Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs())
}

/// The current UTC time as `date -u` prints it.
fn chrono_like_now() -> anyhow::Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// nproc, CPU model and RAM.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let ram_kib: u64 = mem
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    format!(
        "{cpus} cores ({model}), {:.1} GiB RAM",
        ram_kib as f64 / (1024.0 * 1024.0)
    )
}
