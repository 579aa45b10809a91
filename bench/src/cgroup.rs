//! Section 7: a 5,000,000-block sync inside a 256 MiB memory cgroup (cgroup v1), reporting what
//! of the node's memory is bounded and what is reclaimable page cache.
//!
//! A node's resident set has two parts. Anonymous memory (heap, stacks) is what the node itself
//! bounds: windows, queues and caches have fixed caps. File-backed memory is parity-db's
//! memory-mapped index and value tables and the payload files: pages of the page cache that the
//! kernel maps into the process and takes back under pressure. VmHWM counts both, so on a machine
//! with free memory it grows with the store; under a memory limit the kernel reclaims the file
//! pages and the node runs at the same speed. This section makes that visible: the node runs in a
//! cgroup limited to 256 MiB, and the report gives the peak anonymous memory beside the cgroup's
//! page cache, the times the limit was reached and the OOM kills (which must be none).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::proc::{NodeProc, Run, follow};
use crate::report::{Row, int, mib};
use crate::scenarios::{Bench, Chain, remove_store};

/// Blocks of the chain synced inside the cgroup.
pub const CGROUP_BLOCKS: u64 = 5_000_000;
/// Payload bytes of each block.
const PAYLOAD: u64 = 64;
/// The cgroup's memory limit.
const LIMIT_BYTES: u64 = 256 * 1024 * 1024;
/// Where the cgroup v1 memory controller is mounted.
const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";
/// The longest the sync may take.
const TIMEOUT: Duration = Duration::from_secs(2400);

/// A memory cgroup (v1) of its own, removed when dropped (once its processes have ended).
pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Creates `MEMORY_ROOT/name` with a memory limit of `limit` bytes.
    pub fn create(name: &str, limit: u64) -> anyhow::Result<MemoryCgroup> {
        let root = Path::new(MEMORY_ROOT);
        anyhow::ensure!(
            root.join("memory.limit_in_bytes").exists(),
            "no cgroup v1 memory controller at {MEMORY_ROOT}"
        );
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cgroup = MemoryCgroup { dir };
        cgroup.write("memory.limit_in_bytes", &limit.to_string())?;
        // Without swap: charge that would go to swap counts against the limit too.
        let _ = cgroup.write("memory.swappiness", "0");
        anyhow::ensure!(
            cgroup.read_u64("memory.limit_in_bytes")? == limit,
            "limit not taken"
        );
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
    }

    fn read_u64(&self, file: &str) -> anyhow::Result<u64> {
        let path = self.dir.join(file);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds {text:?}", path.display()))
    }

    /// The `cgroup.procs` file a process writes its pid into to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// A value of `memory.stat` (e.g. `total_rss`, `total_cache`), in bytes.
    pub fn stat(&self, key: &str) -> Option<u64> {
        let text = std::fs::read_to_string(self.dir.join("memory.stat")).ok()?;
        find_value(&text, key)
    }

    /// What the cgroup has read at once at most, page cache included.
    pub fn peak_usage(&self) -> anyhow::Result<u64> {
        self.read_u64("memory.max_usage_in_bytes")
    }

    /// How often a charge reached the limit (and the kernel reclaimed to make room).
    pub fn limit_hits(&self) -> anyhow::Result<u64> {
        self.read_u64("memory.failcnt")
    }

    /// Processes of the cgroup killed for lack of memory.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.oom_control"))
            .ok()
            .and_then(|t| find_value(&t, "oom_kill"))
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A cgroup can be removed once its last process has been reaped.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// The value of `key` in `key value` lines.
fn find_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What the cgroup showed when the sync ended.
struct Charged {
    anon: u64,
    cache: u64,
    mapped: u64,
    peak: u64,
    limit_hits: u64,
    oom_kills: u64,
}

/// Section 7: generates the chain, seeds it from a node outside the cgroup, syncs a fresh node
/// inside it, and adds the rows.
pub fn section(
    bench: &Bench,
    rows: &mut Vec<Row>,
    plots: &mut Vec<(String, Vec<(f64, u64)>)>,
) -> anyhow::Result<()> {
    eprintln!("{} blocks in a 256 MiB memory cgroup", int(CGROUP_BLOCKS as f64));
    let cgroup = match MemoryCgroup::create(&format!("syncnode-bench-{}", std::process::id()), LIMIT_BYTES) {
        Ok(c) => c,
        Err(e) => {
            rows.push(Row::new(
                "7",
                "sync in a 256 MiB memory cgroup",
                format!("not run: {e:#}"),
            ));
            return Ok(());
        }
    };
    let (chain, _) = bench.generate("cg", CGROUP_BLOCKS, PAYLOAD)?;
    let seeder = bench.seeder(&chain, "seeder-cg", &[])?;
    let (run, charged) = sync_in(bench, &chain, &seeder, &cgroup)?;
    drop(seeder);
    remove_store(&bench.work, "seeder-cg");
    remove_store(&bench.work, "fresh-cg");
    std::fs::remove_dir_all(&chain.store).ok();
    plots.push(("(7) 5,000,000 x 64 B, 256 MiB cgroup".into(), run.samples.clone()));
    add_rows(rows, &run, &charged);
    Ok(())
}

/// Syncs a fresh node inside `cgroup` from `seeder`; the node is stopped before returning.
fn sync_in(
    bench: &Bench,
    chain: &Chain,
    seeder: &NodeProc,
    cgroup: &MemoryCgroup,
) -> anyhow::Result<(Run, Charged)> {
    let dir = bench.work.join("fresh-cg");
    let _ = std::fs::remove_dir_all(&dir);
    let boot = ["--bootnode".to_string(), seeder.multiaddr()];
    let procs = cgroup.procs();
    let mut node = NodeProc::start_in(
        &bench.env,
        "fresh-cg",
        &bench.spec_path,
        &dir,
        &boot,
        Some(&procs),
    )?;
    let target = chain.blocks;
    let run = follow(&node, target, TIMEOUT, |s| {
        s["head_height"].as_u64().is_some_and(|h| h >= target)
    })
    .context("syncing in the memory cgroup")?;
    let charged = Charged {
        anon: cgroup.stat("total_rss").unwrap_or(0),
        cache: cgroup.stat("total_cache").unwrap_or(0),
        mapped: cgroup.stat("total_mapped_file").unwrap_or(0),
        peak: cgroup.peak_usage()?,
        limit_hits: cgroup.limit_hits()?,
        oom_kills: cgroup.oom_kills(),
    };
    node.stop();
    Ok((run, charged))
}

fn add_rows(rows: &mut Vec<Row>, run: &Run, c: &Charged) {
    rows.push(
        Row::new(
            "7",
            "sync 5,000,000 × 64 B inside a 256 MiB memory cgroup",
            format!(
                "{} blocks/s; limit reached {} times; OOM kills {}",
                int(run.blocks_per_sec()),
                c.limit_hits,
                c.oom_kills
            ),
        )
        .target("completes, no OOM kill", c.oom_kills == 0),
    );
    rows.push(Row::new(
        "7",
        "anonymous memory (heap: what the node bounds), peak / at the end",
        format!("{} / {}", mib(run.peak_anon_rss as f64), mib(run.anon_rss as f64)),
    ));
    rows.push(Row::new(
        "7",
        "page cache charged to the cgroup at the end (reclaimable), of it mapped store files",
        format!("{} / {}", mib(c.cache as f64), mib(c.mapped as f64)),
    ));
    rows.push(Row::new(
        "7",
        "cgroup peak (anonymous + page cache) / VmHWM of the node (anonymous + mapped files)",
        format!(
            "{} / {}; anonymous {} at the end",
            mib(c.peak as f64),
            mib(run.peak_rss as f64),
            mib(c.anon as f64)
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that joins the cgroup through `procs` is charged to it: the peak usage counts
    /// what it touched, and the cgroup is gone after it (needs root and cgroup v1, as `make bench`).
    #[test]
    fn a_process_joining_the_cgroup_is_charged_to_it() {
        let name = format!("syncnode-bench-test-{}", std::process::id());
        let cgroup = MemoryCgroup::create(&name, 64 << 20).expect("cgroup");
        let dir = cgroup.dir.clone();
        // 16 MiB of page cache written by a process inside the cgroup.
        let file = tempfile::NamedTempFile::new().expect("tmp");
        let status = std::process::Command::new("sh")
            .args([
                "-c",
                "echo $$ > \"$0\" && exec head -c 16777216 /dev/zero > \"$1\"",
            ])
            .arg(cgroup.procs())
            .arg(file.path())
            .status()
            .expect("spawn");
        assert!(status.success());
        assert!(
            cgroup.peak_usage().expect("peak") >= 8 << 20,
            "the writer was not charged"
        );
        assert!(cgroup.stat("total_cache").is_some());
        assert_eq!(cgroup.oom_kills(), 0);
        drop(cgroup);
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }

    #[test]
    fn values_are_read_by_key() {
        let stat = "cache 100\nrss 20\ntotal_cache 4096\ntotal_rss 8192\n";
        assert_eq!(find_value(stat, "total_rss"), Some(8192));
        assert_eq!(find_value(stat, "rss"), Some(20));
        assert_eq!(find_value(stat, "swap"), None);
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(find_value(oom, "oom_kill"), Some(2));
    }
}
