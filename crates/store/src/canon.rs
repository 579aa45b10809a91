//! The canonical index: height → hash of the canonical block, stored in segments.
//!
//! Heights are grouped by [`SEGMENT_HEIGHTS`]; segment `s` covers heights `64·s .. 64·s + 63` and
//! is one value in the canonical column under the key `s` (8 bytes BE): a presence bitmap (8 bytes
//! BE, bit `i` set when height `64·s + i` is indexed) followed by 32 bytes per slot up to the
//! highest present one (absent slots below it are zeros). A segment with no slot present is
//! deleted. An import of a batch of blocks so writes one value per 64 heights, instead of one
//! index entry per height: the per-key work of the database (index chunk, B-tree node, log
//! overlay entry) was the largest cost of importing small blocks.
//!
//! Edits are gathered in [`CanonEdits`] and turned into segment writes for the same commit as
//! the blocks and pointers they go with; segments only partly edited are read first (under the
//! store's writer lock, and parity-db's reads see commits not yet written to disk), so the read
//! and the write cannot interleave with another commit.

use std::collections::BTreeMap;

use syncnode_types::{Hash, Height};

use crate::StoreError;
use crate::schema::{COL_CANON, Change};

/// Heights per segment (the bits of the presence bitmap).
pub const SEGMENT_HEIGHTS: u64 = 64;
const BITMAP_BYTES: usize = 8;
const HASH_BYTES: usize = 32;

/// The key of the segment holding `height`, and the height's slot in it.
pub fn locate(height: Height) -> (u64, usize) {
    (height / SEGMENT_HEIGHTS, (height % SEGMENT_HEIGHTS) as usize)
}

/// The key of segment `segment`.
pub fn segment_key(segment: u64) -> [u8; 8] {
    segment.to_be_bytes()
}

/// One decoded segment.
#[derive(Clone, PartialEq, Eq)]
pub struct Segment {
    present: u64,
    hashes: [[u8; HASH_BYTES]; SEGMENT_HEIGHTS as usize],
}

impl Default for Segment {
    fn default() -> Self {
        Segment {
            present: 0,
            hashes: [[0; HASH_BYTES]; SEGMENT_HEIGHTS as usize],
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Segment({:#018x})", self.present)
    }
}

impl Segment {
    /// Decodes segment `segment` from its stored bytes, checking the length against the bitmap.
    pub fn decode(segment: u64, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!(
                "canonical index segment {segment} (heights from {}): {what}",
                segment.saturating_mul(SEGMENT_HEIGHTS)
            ))
        };
        let (bitmap, rest) = bytes
            .split_first_chunk::<BITMAP_BYTES>()
            .ok_or_else(|| corrupt("shorter than its bitmap"))?;
        let present = u64::from_be_bytes(*bitmap);
        let slots = slots_stored(present);
        if present == 0 || rest.len() != slots * HASH_BYTES {
            return Err(corrupt(&format!(
                "{} bytes of hashes for bitmap {present:#018x}",
                rest.len()
            )));
        }
        let mut out = Segment {
            present,
            ..Segment::default()
        };
        for (slot, chunk) in out.hashes.iter_mut().zip(rest.chunks_exact(HASH_BYTES)) {
            slot.copy_from_slice(chunk);
        }
        Ok(out)
    }

    /// The stored bytes, or `None` when no slot is present (the segment is deleted).
    pub fn encode(&self) -> Option<Vec<u8>> {
        if self.present == 0 {
            return None;
        }
        let slots = slots_stored(self.present);
        let mut out = Vec::with_capacity(BITMAP_BYTES + slots * HASH_BYTES);
        out.extend_from_slice(&self.present.to_be_bytes());
        for hash in &self.hashes[..slots] {
            out.extend_from_slice(hash);
        }
        Some(out)
    }

    /// The hash at `slot`, if present.
    pub fn get(&self, slot: usize) -> Option<Hash> {
        (self.present & (1 << slot) != 0).then(|| Hash(self.hashes[slot]))
    }

    /// Sets or clears `slot`.
    pub fn set(&mut self, slot: usize, hash: Option<Hash>) {
        match hash {
            Some(hash) => {
                self.present |= 1 << slot;
                self.hashes[slot] = hash.0;
            }
            None => {
                self.present &= !(1 << slot);
                self.hashes[slot] = [0; HASH_BYTES];
            }
        }
    }
}

/// Slots stored for a bitmap: up to the highest present one.
fn slots_stored(present: u64) -> usize {
    (u64::BITS - present.leading_zeros()) as usize
}

/// Reads segment `segment`, absent as empty.
fn read_segment(db: &parity_db::Db, segment: u64) -> Result<Segment, StoreError> {
    match db.get(COL_CANON, &segment_key(segment))? {
        Some(bytes) => Segment::decode(segment, &bytes),
        None => Ok(Segment::default()),
    }
}

/// Reads canonical hashes, keeping the last segment read: consecutive heights cost one database
/// read per segment.
pub struct CanonReader<'a> {
    db: &'a parity_db::Db,
    last: Option<(u64, Segment)>,
}

impl<'a> CanonReader<'a> {
    pub fn new(db: &'a parity_db::Db) -> Self {
        CanonReader { db, last: None }
    }

    /// The canonical hash at `height`, if indexed.
    pub fn hash_at(&mut self, height: Height) -> Result<Option<Hash>, StoreError> {
        let (segment, slot) = locate(height);
        match &self.last {
            Some((s, seg)) if *s == segment => Ok(seg.get(slot)),
            _ => {
                let seg = read_segment(self.db, segment)?;
                let hash = seg.get(slot);
                self.last = Some((segment, seg));
                Ok(hash)
            }
        }
    }
}

/// Changes to the canonical index for one commit; later edits of a height replace earlier ones.
#[derive(Debug, Default)]
pub struct CanonEdits {
    edits: BTreeMap<Height, Option<Hash>>,
}

impl CanonEdits {
    /// Indexes `hash` at `height`.
    pub fn set(&mut self, height: Height, hash: Hash) {
        self.edits.insert(height, Some(hash));
    }

    /// Removes `height` from the index.
    pub fn remove(&mut self, height: Height) {
        self.edits.insert(height, None);
    }

    /// The hash these edits index at `height`, if they set one.
    pub fn indexed(&self, height: Height) -> Option<Hash> {
        self.edits.get(&height).copied().flatten()
    }

    /// The segment writes that carry out the edits, appended to `changes`. Segments whose every
    /// slot is edited are written without reading them; the others are read from `db` first.
    pub fn write_to(self, db: &parity_db::Db, changes: &mut Vec<Change>) -> Result<(), StoreError> {
        let mut edits = self.edits.into_iter().peekable();
        while let Some((height, hash)) = edits.next() {
            let (segment, slot) = locate(height);
            let mut slots = vec![(slot, hash)];
            while let Some((h, hash)) = edits.next_if(|(h, _)| locate(*h).0 == segment) {
                slots.push((locate(h).1, hash));
            }
            let mut seg = if slots.len() == SEGMENT_HEIGHTS as usize {
                Segment::default()
            } else {
                read_segment(db, segment)?
            };
            for (slot, hash) in slots {
                seg.set(slot, hash);
            }
            changes.push((COL_CANON, segment_key(segment).to_vec(), seg.encode()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u8) -> Hash {
        Hash([n; 32])
    }

    #[test]
    fn a_segment_stores_slots_up_to_its_highest_and_decodes_back() {
        let mut seg = Segment::default();
        assert_eq!(seg.encode(), None);
        seg.set(0, Some(h(1)));
        seg.set(5, Some(h(2)));
        let bytes = seg.encode().expect("present");
        assert_eq!(bytes.len(), 8 + 6 * 32);
        let back = Segment::decode(7, &bytes).expect("decode");
        assert_eq!(back, seg);
        assert_eq!(
            (back.get(0), back.get(1), back.get(5)),
            (Some(h(1)), None, Some(h(2)))
        );
        seg.set(63, Some(h(3)));
        assert_eq!(seg.encode().expect("present").len(), 8 + 64 * 32);
        seg.set(63, None);
        seg.set(5, None);
        assert_eq!(seg.encode().expect("present").len(), 8 + 32);
        seg.set(0, None);
        assert_eq!(seg.encode(), None);
    }

    #[test]
    fn a_segment_whose_length_disagrees_with_its_bitmap_is_corrupt() {
        let mut seg = Segment::default();
        seg.set(3, Some(h(9)));
        let bytes = seg.encode().expect("present");
        for bad in [
            &bytes[..bytes.len() - 1],
            &bytes[..7],
            &[0u8; 8][..],
            &[bytes.as_slice(), &[0; 32]].concat()[..],
        ] {
            let err = Segment::decode(2, bad).expect_err("corrupt");
            assert!(err.to_string().contains("segment 2 (heights from 128)"), "{err}");
        }
    }

    #[test]
    fn heights_map_to_segments_of_64() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(63), (0, 63));
        assert_eq!(locate(64), (1, 0));
        assert_eq!(locate(u64::MAX), (u64::MAX / 64, 63));
    }
}
