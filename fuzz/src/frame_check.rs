//! The frame target: arbitrary bytes as a stream of varint-framed protobuf, read by both the slice
//! decoder and the async reader, and compared with an independent LEB128 reading of the prefix.
//!
//! Input: byte 0 picks the limit (request, response, a small one, or none), byte 1 the message kind
//! (bits 0–2), whether reads return `Pending` first (bit 3) and the read chunk size (bits 4–7); the
//! rest is the stream.
//!
//! Invariants checked:
//! - the outcome is exactly the one the prefix calls for: a length over the limit is `TooLarge`
//!   (even when the prefix is cut short), a malformed prefix is an error, a short body is
//!   `Truncated` with the right counts, and a good frame gives exactly its body;
//! - the slice decoder and the async reader agree, and the async reader takes exactly the frame's
//!   bytes from the stream (never a byte of the next frame);
//! - allocation: the async reader reads the prefix a byte at a time and never offers a body buffer
//!   larger than 64 KiB, nor one reaching past the announced length;
//! - a decoded message re-encodes to a frame that decodes to the same message, is refused by a
//!   limit one byte smaller, and `write_frame` writes exactly those bytes iff they fit the limit.

use std::fmt::Debug;

use futures::executor::block_on;
use prost::Message;
use syncnode_proto::frame::read_frame_bytes;
use syncnode_proto::{FrameError, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, decode_frame, pb};

use crate::reader::ChunkedReader;

/// The frame reader's growth step (private in `syncnode_proto::frame`; the bound it promises).
pub const READ_CHUNK: usize = 64 * 1024;

/// An independent reading of a LEB128 length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// No byte at all.
    Empty,
    /// The stream ends inside the prefix; `value` is what the bytes so far add up to.
    Incomplete { value: u128 },
    /// Ten bytes without an end, or a value that does not fit in a u64.
    Malformed { value: u128 },
    /// A complete prefix of `used` bytes.
    Valid { len: u64, used: usize },
}

/// Reads the prefix of `data` without any of the code under test.
pub fn reference_prefix(data: &[u8]) -> Prefix {
    let mut value: u128 = 0;
    for i in 0..10 {
        let Some(&byte) = data.get(i) else {
            return if i == 0 {
                Prefix::Empty
            } else {
                Prefix::Incomplete { value }
            };
        };
        value |= u128::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return match u64::try_from(value) {
                Ok(len) => Prefix::Valid { len, used: i + 1 },
                Err(_) => Prefix::Malformed { value },
            };
        }
    }
    Prefix::Malformed { value }
}

/// Runs the frame target on one input.
pub fn check(data: &[u8]) {
    let [limit, mode, stream @ ..] = data else {
        return;
    };
    let max = match limit & 3 {
        0 => MAX_REQUEST_FRAME,
        1 => MAX_RESPONSE_FRAME,
        2 => usize::from(limit >> 2) * 97,
        _ => usize::MAX,
    };
    let pending = mode & 0x08 != 0;
    let chunk = usize::from(mode >> 4).pow(3);
    match mode & 7 {
        0 => check_kind::<pb::Status>(stream, max, chunk, pending),
        1 => check_kind::<pb::BlocksByRangeRequest>(stream, max, chunk, pending),
        2 => check_kind::<pb::BlocksByRootRequest>(stream, max, chunk, pending),
        3 => check_kind::<pb::BlocksResponse>(stream, max, chunk, pending),
        4 => check_kind::<pb::Block>(stream, max, chunk, pending),
        _ => check_kind::<pb::BlockHeader>(stream, max, chunk, pending),
    }
}

fn check_kind<M: Message + Default + PartialEq + Debug>(
    stream: &[u8],
    max: usize,
    chunk: usize,
    pending: bool,
) {
    let prefix = reference_prefix(stream);
    // The reference agrees with prost's own reading of a length delimiter.
    let mut rest = stream;
    let prost_len = prost::decode_length_delimiter(&mut rest);
    match prefix {
        Prefix::Valid { len, used } => {
            assert_eq!(prost_len.ok().map(|l| l as u64), Some(len));
            assert_eq!(stream.len() - rest.len(), used);
        }
        _ => assert!(prost_len.is_err(), "{prefix:?} but prost read {prost_len:?}"),
    }

    let sliced = decode_frame::<M>(stream, max);
    let mut reader = ChunkedReader::new(stream, chunk, pending);
    let read = block_on(read_frame_bytes(&mut reader, max));
    check_allocation(&reader, prefix);

    match prefix {
        Prefix::Empty => {
            assert!(
                matches!(sliced, Err(FrameError::Truncated { got: 0, expected: 1 })),
                "{sliced:?}"
            );
            assert!(matches!(read, Ok(None)), "{read:?}");
        }
        Prefix::Incomplete { value } => {
            // Under u64 after at most nine bytes: the limit is checked on every byte, so an
            // over-limit partial length is refused as such; otherwise the prefix is just cut short.
            let over = value > max as u128;
            for outcome in [sliced.as_ref().err(), read.as_ref().err()] {
                match outcome {
                    Some(FrameError::TooLarge { .. }) => assert!(over, "TooLarge for {prefix:?}, max {max}"),
                    Some(FrameError::BadLength | FrameError::Truncated { .. }) => {
                        assert!(
                            !over,
                            "an over-limit prefix {prefix:?} (max {max}) must be TooLarge"
                        )
                    }
                    other => panic!("{prefix:?} (max {max}) gave {other:?}"),
                }
            }
        }
        Prefix::Malformed { value } => {
            for outcome in [sliced.as_ref().err(), read.as_ref().err()] {
                match outcome {
                    Some(FrameError::BadLength) => {}
                    Some(FrameError::TooLarge { .. }) => {
                        assert!(value > max as u128, "{prefix:?}, max {max}")
                    }
                    other => panic!("malformed prefix {prefix:?} (max {max}) gave {other:?}"),
                }
            }
        }
        Prefix::Valid { len, .. } if len > max as u64 => {
            assert!(matches!(sliced, Err(FrameError::TooLarge { .. })), "{sliced:?}");
            assert!(matches!(read, Err(FrameError::TooLarge { .. })), "{read:?}");
        }
        Prefix::Valid { len, used } => {
            let len = len as usize;
            let available = stream.len() - used;
            if available < len {
                for outcome in [sliced.as_ref().err(), read.as_ref().err()] {
                    match outcome {
                        Some(FrameError::Truncated { got, expected }) => {
                            assert_eq!((*got, *expected), (available, len))
                        }
                        other => panic!("short body gave {other:?}"),
                    }
                }
                return;
            }
            let body = &stream[used..used + len];
            let read = read.expect("a whole frame reads").expect("not end of stream");
            assert_eq!(&read[..], body);
            assert_eq!(
                reader.consumed(),
                used + len,
                "the reader took bytes past its frame"
            );
            match (M::decode(body), sliced) {
                (Ok(expected), Ok((msg, consumed))) => {
                    assert_eq!((&msg, consumed), (&expected, used + len));
                    check_round_trip(&msg, max, chunk, pending);
                }
                (Err(_), Err(FrameError::Decode(_))) => {}
                (expected, got) => panic!("body decodes as {expected:?}, frame as {got:?}"),
            }
        }
    }
}

/// The async reader reads the prefix a byte at a time, and never offers a body buffer larger than
/// one chunk or reaching past the announced length.
fn check_allocation(reader: &ChunkedReader<'_>, prefix: Prefix) {
    let (len, used) = match prefix {
        Prefix::Valid { len, used } => (len, used),
        _ => (0, 10),
    };
    for &(pos, offer) in &reader.offers {
        if pos < used {
            assert_eq!(offer, 1, "prefix byte {pos} read with a buffer of {offer}");
        } else {
            assert!(offer <= READ_CHUNK, "body buffer of {offer} bytes");
            assert!(
                (pos - used + offer) as u64 <= len,
                "buffer reaches past the frame"
            );
        }
    }
}

/// A message re-encodes to a frame that decodes back to it, under exactly its own length limit.
pub fn check_round_trip<M: Message + Default + PartialEq + Debug>(
    msg: &M,
    max: usize,
    chunk: usize,
    pending: bool,
) {
    let frame = syncnode_proto::encode_frame(msg);
    let len = msg.encoded_len();
    assert_eq!(frame.len(), prost::length_delimiter_len(len) + len);
    let (back, used) = decode_frame::<M>(&frame, len).expect("own frame decodes");
    assert_eq!((&back, used), (msg, frame.len()));
    if len > 0 {
        assert!(matches!(
            decode_frame::<M>(&frame, len - 1),
            Err(FrameError::TooLarge { .. })
        ));
    }
    let mut reader = ChunkedReader::new(&frame, chunk, pending);
    let back: M = block_on(syncnode_proto::read_frame(&mut reader, len)).expect("own frame reads");
    assert_eq!(&back, msg);

    let mut written = Vec::new();
    let result = block_on(syncnode_proto::write_frame(
        &mut futures::io::Cursor::new(&mut written),
        msg,
        max,
    ));
    if len <= max {
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(written, frame);
    } else {
        assert!(matches!(result, Err(FrameError::TooLarge { .. })), "{result:?}");
        assert!(written.is_empty());
    }
}
