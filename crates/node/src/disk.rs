//! The data directory's free space: the importer pauses while it is below the floor
//! (`--min-free-space`) or a write failed for lack of space, and resumes by itself once there is
//! room again. Serving what the store holds goes on meanwhile. The floor keeps room for the
//! store's own commits (parity-db's log files and table growth) so that a full disk is met here,
//! before a write, and not in the middle of one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use syncnode_store::StoreError;

/// The default floor: room for a few of parity-db's 8 MiB log files, an import group (8 MiB) and
/// the growth of its tables and indexes, with a wide margin.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 256 * 1024 * 1024;
/// How often a paused importer looks at the free space again.
const RECHECK: Duration = Duration::from_millis(500);
/// After a write failed for lack of space, how much more must be free before importing resumes
/// (an import group's bytes): the floor alone may be what was not enough.
const RESUME_MARGIN: u64 = 8 * 1024 * 1024;

/// The data directory's space, as the importer last saw it; read by `/status` and `/metrics`.
#[derive(Debug)]
pub struct DiskSpace {
    data_dir: PathBuf,
    min_free: u64,
    full: AtomicBool,
    free_bytes: AtomicU64,
    /// Free bytes when a write last failed for lack of space; `u64::MAX` before any.
    free_at_failure: AtomicU64,
    /// parity-db stopped after a failed write: no import succeeds before a restart.
    stopped: AtomicBool,
    full_gauge: Gauge,
    free_gauge: Gauge,
}

impl DiskSpace {
    /// Watches the filesystem of `data_dir`, pausing imports below `min_free` free bytes.
    pub fn new(data_dir: &Path, min_free: u64) -> Arc<Self> {
        let disk = Arc::new(DiskSpace {
            data_dir: data_dir.to_owned(),
            min_free,
            full: AtomicBool::new(false),
            free_bytes: AtomicU64::new(0),
            free_at_failure: AtomicU64::new(u64::MAX),
            stopped: AtomicBool::new(false),
            full_gauge: Gauge::default(),
            free_gauge: Gauge::default(),
        });
        disk.free();
        disk
    }

    /// [`Self::new`], its gauges registered and its first check made: what a node starts with.
    pub fn watched(data_dir: &Path, min_free: u64, registry: &mut Registry) -> Arc<Self> {
        let disk = Self::new(data_dir, min_free);
        disk.register(registry);
        disk.check();
        disk
    }

    /// Registers `syncnode_disk_full` and `syncnode_disk_free_bytes`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("syncnode");
        r.register(
            "disk_full",
            "1 while imports are paused for lack of space in the data directory",
            self.full_gauge.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Bytes free to the node on the data directory's filesystem",
            self.free_gauge.clone(),
        );
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Whether imports are paused for lack of space.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The bytes free to an unprivileged writer now (0 if the filesystem cannot be asked).
    pub fn free(&self) -> u64 {
        let free = match fs2::available_space(&self.data_dir) {
            Ok(free) => free,
            Err(e) => {
                tracing::debug!(dir = %self.data_dir.display(), "free space unknown: {e}");
                0
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        self.free_gauge.set(i64::try_from(free).unwrap_or(i64::MAX));
        free
    }

    /// Whether there is room for an import: free space at or above the floor and, after a write
    /// failed for lack of space, [`RESUME_MARGIN`] more than there was then.
    fn has_room(&self) -> bool {
        let free = self.free();
        let failed_at = self.free_at_failure.load(Ordering::Relaxed);
        free >= self.min_free && (failed_at == u64::MAX || free >= failed_at.saturating_add(RESUME_MARGIN))
    }

    /// Whether parity-db has stopped after a failed write (see [`DiskSpace::write_failed`]).
    pub fn store_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Takes note of a store error: one that is a lack of space pauses imports. If parity-db
    /// stopped on it, nothing can be imported until the node is restarted, and the log says so.
    pub fn write_failed(&self, e: &StoreError) {
        if e.is_db_stopped() && !self.stopped.swap(true, Ordering::Relaxed) {
            tracing::error!(
                data_dir = %self.data_dir.display(),
                "the store stopped after a failed write ({e}): importing has ended (serving goes \
                 on); make room in the data directory's filesystem, then restart the node"
            );
        }
        if e.is_out_of_space() || e.is_db_stopped() {
            self.free_at_failure.store(self.free(), Ordering::Relaxed);
            self.pause(&format!("a write failed: {e}"));
        }
    }

    /// Pauses imports if the free space is below the floor (at start-up, before any import).
    pub fn check(&self) {
        if self.free() < self.min_free {
            self.pause(&format!(
                "{} bytes free, below the floor of {} (--min-free-space)",
                self.free_bytes.load(Ordering::Relaxed),
                self.min_free
            ));
        }
    }

    /// Marks imports paused and says so once, as an error with what to do.
    pub fn pause(&self, why: &str) {
        if self.full.swap(true, Ordering::Relaxed) {
            return;
        }
        self.full_gauge.set(1);
        tracing::error!(
            data_dir = %self.data_dir.display(),
            free_bytes = self.free_bytes.load(Ordering::Relaxed),
            min_free_bytes = self.min_free,
            "disk full: {why}; importing is paused (serving goes on) and resumes by itself once \
             the filesystem of the data directory has room: free space there or grow it"
        );
    }

    fn resume(&self) {
        if self.full.swap(false, Ordering::Relaxed) {
            self.full_gauge.set(0);
            self.free_at_failure.store(u64::MAX, Ordering::Relaxed);
            tracing::info!(
                free_bytes = self.free_bytes.load(Ordering::Relaxed),
                "disk space is back: importing resumes"
            );
        }
    }

    /// Blocks the calling (importer) thread until there is room for an import, pausing while
    /// there is not; `false` if `stop` says to give up first.
    pub fn wait_for_room(&self, stop: impl Fn() -> bool) -> bool {
        loop {
            if self.has_room() {
                self.resume();
                return true;
            }
            self.pause(&format!(
                "{} bytes free, below the floor of {} (--min-free-space)",
                self.free_bytes.load(Ordering::Relaxed),
                self.min_free
            ));
            if stop() {
                return false;
            }
            std::thread::sleep(RECHECK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_failed_for_lack_of_space_pauses_until_more_is_free() {
        let dir = tempfile::tempdir().expect("tmp");
        let disk = DiskSpace::new(dir.path(), 0);
        let enospc = StoreError::PayloadIo {
            path: dir.path().join("00000000.payload"),
            what: "write".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        disk.write_failed(&StoreError::Empty);
        assert!(!disk.is_full(), "other errors are not a lack of space");
        disk.write_failed(&enospc);
        assert!(disk.is_full());
        assert!(!disk.store_stopped());
        assert_ne!(disk.free_at_failure.load(Ordering::Relaxed), u64::MAX);
        // The floor (0) is met, but no more is free than when the write failed (other processes
        // write to this filesystem too: say the failure saw a little more than now).
        disk.free_at_failure.store(disk.free() + 1, Ordering::Relaxed);
        assert!(!disk.wait_for_room(|| true));
        // Once RESUME_MARGIN more is free than then, importing resumes.
        disk.free_at_failure.store(0, Ordering::Relaxed);
        assert!(disk.wait_for_room(|| true));
        assert!(!disk.is_full());
    }

    #[test]
    fn the_floor_pauses_and_free_space_resumes() {
        let dir = tempfile::tempdir().expect("tmp");
        let roomy = DiskSpace::new(dir.path(), 0);
        assert!(roomy.wait_for_room(|| true));
        assert!(!roomy.is_full());
        assert!(roomy.free() > 0);

        let cramped = DiskSpace::new(dir.path(), u64::MAX);
        assert!(!cramped.wait_for_room(|| true), "gives up when told to");
        assert!(cramped.is_full());
        assert_eq!(cramped.full_gauge.get(), 1);
    }
}
