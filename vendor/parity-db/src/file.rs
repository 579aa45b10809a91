// Copyright 2021-2022 Parity Technologies (UK) Ltd.
// This file is dual-licensed as Apache-2.0 or MIT.

//! Utilities for db file.

use crate::{
	error::{try_io, Result},
	mmap::{allocate, Mmap},
	parking_lot::RwLock,
	table::TableId,
};
use std::sync::atomic::{AtomicU64, Ordering};

trait OpenOptionsExt {
	fn disable_read_ahead(&mut self) -> &mut Self;
}

impl OpenOptionsExt for std::fs::OpenOptions {
	#[cfg(not(windows))]
	fn disable_read_ahead(&mut self) -> &mut Self {
		// Not supported
		self
	}

	#[cfg(windows)]
	fn disable_read_ahead(&mut self) -> &mut Self {
		use std::os::windows::fs::OpenOptionsExt;
		self.custom_flags(winapi::um::winbase::FILE_FLAG_RANDOM_ACCESS)
	}
}

#[cfg(target_os = "linux")]
fn disable_read_ahead(file: &std::fs::File) -> std::io::Result<()> {
	use std::os::unix::io::AsRawFd;
	let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
	if err != 0 {
		Err(std::io::Error::from_raw_os_error(err))
	} else {
		Ok(())
	}
}

#[cfg(target_os = "macos")]
fn disable_read_ahead(file: &std::fs::File) -> std::io::Result<()> {
	use std::os::unix::io::AsRawFd;
	if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_RDAHEAD, 0) } != 0 {
		Err(std::io::Error::last_os_error())
	} else {
		Ok(())
	}
}

#[cfg(not(any(target_os = "macos", target_os = "linux")))]
fn disable_read_ahead(_file: &std::fs::File) -> std::io::Result<()> {
	Ok(())
}

const GROW_SIZE_BYTES: u64 = 256 * 1024;

#[derive(Debug)]
pub struct TableFile {
	pub map: RwLock<Option<(Mmap, std::fs::File)>>,
	pub path: std::path::PathBuf,
	pub capacity: AtomicU64,
	pub id: TableId,
}

impl TableFile {
	pub fn open(filepath: std::path::PathBuf, entry_size: u16, id: TableId) -> Result<Self> {
		let mut capacity = 0u64;
		let map = if let Err(error) = std::fs::metadata(&filepath) {
			match error.kind() {
				std::io::ErrorKind::NotFound => None,
				_ => return try_io!(Err(error)),
			}
		} else {
			let file = try_io!(std::fs::OpenOptions::new()
				.read(true)
				.write(true)
				.disable_read_ahead()
				.open(filepath.as_path()));
			try_io!(disable_read_ahead(&file));
			let len = try_io!(file.metadata()).len();
			if len == 0 {
				// Preallocate.
				capacity += GROW_SIZE_BYTES / entry_size as u64;
				try_io!(allocate(&file, 0, GROW_SIZE_BYTES));
			} else {
				capacity = len / entry_size as u64;
				// A file grown by `set_len` may have unallocated pages (syncnode patch).
				try_io!(allocate(&file, 0, len));
			}
			let map = Mmap::map_growable(&file, len as usize)?;
			Some((map, file))
		};
		Ok(TableFile {
			path: filepath,
			map: RwLock::new(map),
			capacity: AtomicU64::new(capacity),
			id,
		})
	}

	fn create_file(&self) -> Result<std::fs::File> {
		log::debug!(target: "parity-db", "Created value table {}", self.id);
		let file = try_io!(std::fs::OpenOptions::new()
			.create(true)
			.read(true)
			.write(true)
			.disable_read_ahead()
			.open(self.path.as_path()));
		try_io!(disable_read_ahead(&file));
		Ok(file)
	}

	pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
		let offset = offset as usize;
		let map = self.map.read();
		let (map, _) = map.as_ref().unwrap();
		map.read_at(buf, offset);
		Ok(())
	}

	#[cfg(not(feature = "loom"))]
	pub fn slice_at(&self, offset: u64, len: usize) -> MappedBytesGuard<'_> {
		let offset = offset as usize;
		let map = self.map.read();
		parking_lot::RwLockReadGuard::map(map, |map| {
			let (map, _) = map.as_ref().unwrap();
			map.slice(offset, len)
		})
	}

	#[cfg(feature = "loom")]
	pub fn slice_at(&self, offset: u64, len: usize) -> MappedBytesGuard {
		let offset = offset as usize;
		let map = self.map.read();
		let (map, _) = map.as_ref().unwrap();
		MappedBytesGuard::new(map.slice(offset, len).to_vec())
	}

	pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
		let map = self.map.read();
		let (map, _) = map.as_ref().unwrap();
		let offset = offset as usize;

		// SAFETY: Writes happen under a shared lock, but all entries that are being written are
		// accessed through the log overlay in other threads, so no other slice of this range
		// exists.
		unsafe { map.write_at(buf, offset) };
		Ok(())
	}

	pub fn grow(&self, entry_size: u16) -> Result<()> {
		let mut map_and_file = self.map.write();
		let new_len = match map_and_file.as_mut() {
			None => {
				let file = self.create_file()?;
				let len = GROW_SIZE_BYTES;
				try_io!(allocate(&file, 0, len));
				let map = Mmap::map_growable(&file, 0)?;
				*map_and_file = Some((map, file));
				len
			},
			Some((map, file)) => {
				let old_len = try_io!(file.metadata()).len();
				let new_len = old_len + GROW_SIZE_BYTES;
				if let Err(e) = allocate(file, old_len, GROW_SIZE_BYTES) {
					// Keep the length a multiple of the entry size for the next attempt.
					let _ = file.set_len(old_len);
					return try_io!(Err(e))
				}
				if map.len() < new_len as usize {
					let new_map = Mmap::map_growable(file, new_len as usize)?;
					let old_map = std::mem::replace(map, new_map);
					old_map.flush()?;
				}
				new_len
			},
		};
		let capacity = new_len / entry_size as u64;
		self.capacity.store(capacity, Ordering::Relaxed);
		Ok(())
	}

	pub fn flush(&self) -> Result<()> {
		if let Some((map, _)) = self.map.read().as_ref() {
			map.flush()?;
		}
		Ok(())
	}

	/// Drop the resident pages of the mapping; see [`Mmap::release`].
	pub fn release_pages(&self) -> Result<()> {
		if let Some((map, _)) = self.map.read().as_ref() {
			map.release()?;
		}
		Ok(())
	}

	pub fn remove(&self) -> Result<()> {
		let mut map = self.map.write();
		if let Some((map, file)) = map.take() {
			drop(map);
			drop(file);
			try_io!(std::fs::remove_file(&self.path));
		}
		Ok(())
	}
}

// Loom is missing support for guard projection, so we copy the data as a workaround.
#[cfg(feature = "loom")]
pub struct MappedBytesGuard<'a> {
	_phantom: std::marker::PhantomData<&'a ()>,
	data: Vec<u8>,
}

#[cfg(feature = "loom")]
impl<'a> MappedBytesGuard<'a> {
	pub fn new(data: Vec<u8>) -> Self {
		Self { _phantom: std::marker::PhantomData, data }
	}
}

#[cfg(feature = "loom")]
impl<'a> std::ops::Deref for MappedBytesGuard<'a> {
	type Target = [u8];

	fn deref(&self) -> &Self::Target {
		self.data.as_slice()
	}
}

#[cfg(not(feature = "loom"))]
pub type MappedBytesGuard<'a> = parking_lot::MappedRwLockReadGuard<'a, [u8]>;

// syncnode patch: a value table's file is written through a map, so its space must be allocated
// when it grows (a write into an unallocated page of a full disk raises SIGBUS).
#[cfg(all(test, target_os = "linux"))]
mod test {
	use super::{TableFile, GROW_SIZE_BYTES};
	use crate::table::TableId;
	use std::os::unix::fs::MetadataExt;

	#[test]
	fn grown_table_file_has_its_space_allocated() {
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("table");
		let table = TableFile::open(path.clone(), 64, TableId::new(0, 0)).unwrap();
		table.grow(64).unwrap();
		table.grow(64).unwrap();
		let meta = std::fs::metadata(&path).unwrap();
		assert_eq!(meta.len(), 2 * GROW_SIZE_BYTES);
		assert!(meta.blocks() * 512 >= 2 * GROW_SIZE_BYTES, "{} bytes allocated", meta.blocks() * 512);
		// A sparse file left by an earlier version is allocated when it is opened.
		drop(table);
		std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4 * GROW_SIZE_BYTES).unwrap();
		let _table = TableFile::open(path.clone(), 64, TableId::new(0, 0)).unwrap();
		assert!(std::fs::metadata(&path).unwrap().blocks() * 512 >= 4 * GROW_SIZE_BYTES);
	}
}
