//! Payloads, written once to append-only files beside parity-db.
//!
//! parity-db writes every value twice (to its log, then to its tables through memory maps) and
//! syncs both, and its per-value work grows with the value. Measured with `perf` on an import of
//! 64 KiB blocks, 85% of the CPU time was the kernel's (page faults on fresh table pages,
//! write-protect TLB flushes at `msync`, the log's copy): ~110 MB/s on a disk that takes
//! 330 MB/s of synced 1 MiB writes. A payload of at least [`EXTERNAL_PAYLOAD_MIN`] bytes is
//! appended to a numbered file in `payloads/` instead, and the block's value in parity-db holds
//! the rest of the block and a [`PayloadRef`]. Store import in isolation: 64 KiB blocks
//! ~110 → ~335 MB/s, 1 KiB blocks ~45k → ~82k blocks/s, 512 B ~75k → ~95k blocks/s.
//!
//! ## Crash safety
//! Payloads are written and synced (`fdatasync`) before the parity-db commit that references
//! them is made, and that commit records the end of the written payloads ([`Tail`]). So every
//! reference a reopened store holds points at synced bytes. At open, bytes past the committed
//! tail (the payloads of a commit that never happened) are cut off and files numbered past it
//! are removed. A reference whose bytes are missing or fail their CRC reads as a damaged block,
//! which the check at open rolls back like any other.
//!
//! ## Space
//! A new file is started once the current one holds [`FILE_TARGET_BYTES`] (or the configured
//! size). The number of stored blocks referencing each file is kept in the metadata column,
//! changed within the same commits as the references. A file whose count reaches zero (its
//! blocks pruned) is removed at the next open: parity-db makes a commit durable some time after
//! `commit` returns, and a file deleted before that would be missed by the blocks a crash brings
//! back. At open, parity-db has replayed every commit in its files, so a file it counts no reference
//! to is referenced by nothing a killed process could come back to.

use std::fs::{File, OpenOptions};
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use lru::LruCache;
use syncnode_types::MAX_PAYLOAD_BYTES;

use crate::{StoreError, lock};

/// Payloads of at least this many bytes go to the payload files. Smaller ones stay in parity-db:
/// at 256 B both ways import at the same speed, and a block read costs one lookup, not two.
pub const EXTERNAL_PAYLOAD_MIN: usize = 512;
/// Size at which a payload file is closed and the next one started.
pub const FILE_TARGET_BYTES: u64 = 256 * 1024 * 1024;
/// Payload files kept open for reading.
const OPEN_READERS: usize = 32;

/// Where a block's payload lies: file number, offset, length and CRC-32 of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadRef {
    pub file: u32,
    pub offset: u64,
    pub len: u32,
    pub crc: u32,
}

impl PayloadRef {
    /// Encoded length: file u32, offset u64, length u32, CRC u32, all big-endian.
    pub const LEN: usize = 20;

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.file.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.crc.to_be_bytes());
    }

    /// Decodes the first [`PayloadRef::LEN`] bytes; `None` if too short.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..Self::LEN)?;
        Some(PayloadRef {
            file: u32::from_be_bytes(b[0..4].try_into().ok()?),
            offset: u64::from_be_bytes(b[4..12].try_into().ok()?),
            len: u32::from_be_bytes(b[12..16].try_into().ok()?),
            crc: u32::from_be_bytes(b[16..20].try_into().ok()?),
        })
    }
}

/// The end of the written payloads: the file being appended to and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tail {
    pub file: u32,
    pub end: u64,
}

impl Tail {
    /// 12 bytes: file u32 BE, end u64 BE.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        out.extend_from_slice(&self.file.to_be_bytes());
        out.extend_from_slice(&self.end.to_be_bytes());
        out
    }

    /// Decodes [`Tail::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt("payload tail is not 12 bytes".into());
        let b: &[u8; 12] = bytes.try_into().map_err(|_| corrupt())?;
        let file = u32::from_be_bytes(b[0..4].try_into().map_err(|_| corrupt())?);
        let end = u64::from_be_bytes(b[4..12].try_into().map_err(|_| corrupt())?);
        Ok(Tail { file, end })
    }
}

/// The payload files of one store.
pub(crate) struct PayloadFiles {
    dir: PathBuf,
    file_target: u64,
    /// Where the next payload goes, and the open file there. Ahead of the committed tail
    /// between an append and its commit.
    appender: Mutex<(Tail, Option<File>)>,
    readers: Mutex<LruCache<u32, Arc<File>>>,
}

fn io_error(path: &Path, what: &str, source: std::io::Error) -> StoreError {
    StoreError::PayloadIo {
        path: path.to_owned(),
        what: what.to_owned(),
        source,
    }
}

fn file_number(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".payload")?;
    (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl PayloadFiles {
    /// Opens the payload files in `dir` (created if absent) whose committed tail is `committed`.
    /// With `tidy`, cuts the tail file back to the committed end and removes files past it and
    /// files before it that `is_referenced` says no block references.
    pub fn open(
        dir: &Path,
        committed: Tail,
        file_target: u64,
        tidy: bool,
        is_referenced: impl Fn(u32) -> Result<bool, StoreError>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "create", e))?;
        if tidy {
            let entries = std::fs::read_dir(dir).map_err(|e| io_error(dir, "list", e))?;
            for entry in entries {
                let entry = entry.map_err(|e| io_error(dir, "list", e))?;
                let Some(number) = entry.file_name().to_str().and_then(file_number) else {
                    continue;
                };
                let path = entry.path();
                if number > committed.file || (number < committed.file && !is_referenced(number)?) {
                    tracing::info!(file = %path.display(), "removing unreferenced payload file");
                    std::fs::remove_file(&path).map_err(|e| io_error(&path, "remove", e))?;
                } else if number == committed.file {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io_error(&path, "open", e))?;
                    let len = file.metadata().map_err(|e| io_error(&path, "stat", e))?.len();
                    if len != committed.end {
                        tracing::info!(
                            file = %path.display(),
                            len,
                            committed = committed.end,
                            "cutting payload file back to its committed end"
                        );
                        file.set_len(committed.end)
                            .map_err(|e| io_error(&path, "truncate", e))?;
                        file.sync_all().map_err(|e| io_error(&path, "sync", e))?;
                    }
                }
            }
        }
        Ok(PayloadFiles {
            dir: dir.to_owned(),
            file_target: file_target.max(1),
            appender: Mutex::new((committed, None)),
            readers: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_READERS).unwrap_or(NonZeroUsize::MIN),
            )),
        })
    }

    /// The path of payload file `number`.
    pub fn path(&self, number: u32) -> PathBuf {
        self.dir.join(format!("{number:08}.payload"))
    }

    /// Writes `payloads` one after another at the end of the payload files and syncs them,
    /// starting a new file first if the current one is full. Returns where each went and the
    /// new tail, which the caller commits with the references.
    pub fn append(&self, payloads: &[&[u8]]) -> Result<(Vec<PayloadRef>, Tail), StoreError> {
        let mut guard = lock(&self.appender);
        let (tail, open) = &mut *guard;
        let mut next = *tail;
        if next.end >= self.file_target {
            next = Tail {
                file: next.file.saturating_add(1),
                end: 0,
            };
            *open = None;
        }
        let path = self.path(next.file);
        if open.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, "open", e))?;
            // A new file's name must survive a power cut as well as its bytes.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_error(&self.dir, "sync directory", e))?;
            *open = Some(file);
        }
        let Some(file) = open.as_ref() else {
            return Err(StoreError::Corrupt("payload file is not open".into()));
        };
        let mut refs = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let len = u32::try_from(payload.len())
                .map_err(|_| StoreError::Corrupt(format!("payload of {} bytes", payload.len())))?;
            file.write_all_at(payload, next.end)
                .map_err(|e| io_error(&path, "write", e))?;
            refs.push(PayloadRef {
                file: next.file,
                offset: next.end,
                len,
                crc: crc32fast::hash(payload),
            });
            next.end += u64::from(len);
        }
        file.sync_data().map_err(|e| io_error(&path, "sync", e))?;
        *tail = next;
        Ok((refs, next))
    }

    /// The file being appended to.
    #[cfg(test)]
    pub fn tail_file(&self) -> u32 {
        lock(&self.appender).0.file
    }

    /// Reads a payload, checking its length bound and CRC.
    pub fn read(&self, r: &PayloadRef) -> Result<Vec<u8>, StoreError> {
        let path = self.path(r.file);
        let len = r.len as usize;
        if len > MAX_PAYLOAD_BYTES {
            return Err(StoreError::Corrupt(format!(
                "payload reference into {} claims {len} bytes",
                path.display()
            )));
        }
        let file = self.reader(r.file)?;
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, r.offset)
            .map_err(|e| io_error(&path, &format!("read {len} bytes at {}", r.offset), e))?;
        if crc32fast::hash(&bytes) != r.crc {
            return Err(StoreError::Corrupt(format!(
                "payload at {} of {} fails its CRC",
                r.offset,
                path.display()
            )));
        }
        Ok(bytes)
    }

    fn reader(&self, number: u32) -> Result<Arc<File>, StoreError> {
        if let Some(file) = lock(&self.readers).get(&number) {
            return Ok(Arc::clone(file));
        }
        let path = self.path(number);
        let file = Arc::new(File::open(&path).map_err(|e| io_error(&path, "open", e))?);
        lock(&self.readers).put(number, Arc::clone(&file));
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_tails_round_trip() {
        let r = PayloadRef {
            file: 7,
            offset: 1 << 40,
            len: 65_536,
            crc: 0xdead_beef,
        };
        let mut out = vec![];
        r.encode_into(&mut out);
        assert_eq!(out.len(), PayloadRef::LEN);
        assert_eq!(PayloadRef::decode(&out), Some(r));
        assert_eq!(PayloadRef::decode(&out[..19]), None);
        let t = Tail { file: 3, end: 99 };
        assert_eq!(Tail::decode(&t.encode()).expect("decode"), t);
        assert!(Tail::decode(&[0; 11]).is_err());
    }

    #[test]
    fn file_names_parse_only_when_ours() {
        assert_eq!(file_number("00000012.payload"), Some(12));
        assert_eq!(file_number("0000012.payload"), None);
        assert_eq!(file_number("0000001x.payload"), None);
        assert_eq!(file_number("00000012.payload.tmp"), None);
    }

    #[test]
    fn appends_read_back_rotate_and_detect_damage() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = PayloadFiles::open(dir.path(), Tail::default(), 100, true, |_| Ok(true)).expect("open");
        let a = vec![1u8; 60];
        let b = vec![2u8; 60];
        let (refs, tail) = files.append(&[&a, &b]).expect("append");
        assert_eq!(tail, Tail { file: 0, end: 120 });
        assert_eq!(files.read(&refs[1]).expect("read"), b);
        // The file is past its target: the next append starts file 1.
        let (more, tail) = files.append(&[&a]).expect("append");
        assert_eq!((more[0].file, more[0].offset), (1, 0));
        assert_eq!(tail, Tail { file: 1, end: 60 });
        let mut bad = refs[0];
        bad.crc ^= 1;
        assert!(files.read(&bad).is_err());
        let past = PayloadRef {
            offset: 100,
            ..refs[0]
        };
        assert!(files.read(&past).is_err(), "reads past the end fail");
        let huge = PayloadRef {
            len: u32::MAX,
            ..refs[0]
        };
        assert!(
            files.read(&huge).is_err(),
            "a corrupt length is refused before allocating"
        );
        let missing = PayloadRef { file: 9, ..refs[0] };
        assert!(
            matches!(files.read(&missing), Err(StoreError::PayloadIo { .. })),
            "a missing file is an I/O error, named as such"
        );
    }

    #[test]
    fn open_cuts_back_uncommitted_bytes_and_files_and_drops_unreferenced_ones() {
        let dir = tempfile::tempdir().expect("tmp");
        let files = PayloadFiles::open(dir.path(), Tail::default(), 100, true, |_| Ok(true)).expect("open");
        let a = vec![5u8; 80];
        files.append(&[&a, &a]).expect("append"); // file 0: 160 bytes
        let (refs, _) = files.append(&[&a, &a]).expect("append"); // file 1: 160 bytes
        files.append(&[&a]).expect("append"); // file 2: 80 bytes
        let path = |n: u32| dir.path().join(format!("{n:08}.payload"));
        drop(files);
        // Say only file 1's first payload was committed, and file 0 is referenced by nothing.
        let committed = Tail { file: 1, end: 80 };
        let files = PayloadFiles::open(dir.path(), committed, 100, true, |n| Ok(n != 0)).expect("reopen");
        assert!(!path(0).exists(), "unreferenced file before the tail is removed");
        assert!(!path(2).exists(), "file past the committed tail is removed");
        assert_eq!(std::fs::metadata(path(1)).expect("stat").len(), 80);
        assert_eq!(files.read(&refs[0]).expect("committed payload reads"), a);
        assert!(files.read(&refs[1]).is_err(), "the cut payload is gone");
        // The next append continues at the committed end, then file 1 is full.
        let (again, _) = files.append(&[&a]).expect("append");
        assert_eq!((again[0].file, again[0].offset), (1, 80));
        let (again, _) = files.append(&[&a]).expect("append");
        assert_eq!((again[0].file, again[0].offset), (2, 0));
        assert_eq!(files.read(&again[0]).expect("read"), a);
    }
}
