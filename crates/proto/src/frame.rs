//! Varint-length-prefixed frames with limits checked before allocation.

use bytes::Bytes;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use prost::Message;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("frame length prefix is not a valid LEB128 varint")]
    BadLength,
    #[error("stream ended after {got} of {expected} frame bytes")]
    Truncated { got: usize, expected: usize },
    #[error("frame does not decode as protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Most bytes of a varint that can hold a u64.
const MAX_VARINT_LEN: usize = 10;

/// Growth step while a frame's bytes arrive; a peer must send data to make us hold more.
const READ_CHUNK: usize = 64 * 1024;

/// Whether prefix byte `index` carries bits past the 64th: the tenth byte holds only bit 63, so
/// anything above 1 there is no u64 (shifting it would silently drop the high bits).
fn past_u64(index: usize, byte: u8) -> bool {
    index == MAX_VARINT_LEN - 1 && byte > 1
}

/// Encodes `msg` as one frame: varint length, then the protobuf bytes.
pub fn encode_frame<M: Message>(msg: &M) -> Vec<u8> {
    let len = msg.encoded_len();
    let mut out = Vec::with_capacity(len + MAX_VARINT_LEN);
    // Writing into a Vec sized for the message cannot run out of space.
    let _ = msg.encode_length_delimited(&mut out);
    out
}

/// Decodes one whole frame from a byte slice, checking the limit before anything else.
/// Returns the message and the number of bytes consumed.
pub fn decode_frame<M: Message + Default>(buf: &[u8], max: usize) -> Result<(M, usize), FrameError> {
    let mut len: u64 = 0;
    let mut prefix = 0usize;
    loop {
        let byte = *buf
            .get(prefix)
            .ok_or(FrameError::Truncated { got: 0, expected: 1 })?;
        if past_u64(prefix, byte) {
            return Err(FrameError::BadLength);
        }
        len |= u64::from(byte & 0x7f) << (7 * prefix);
        prefix += 1;
        if len > max as u64 {
            return Err(FrameError::TooLarge { len, max });
        }
        if byte & 0x80 == 0 {
            break;
        }
        if prefix == MAX_VARINT_LEN {
            return Err(FrameError::BadLength);
        }
    }
    let len = len as usize;
    // Never `prefix + len`: without a limit, `len` may be near `usize::MAX`.
    let body = buf
        .get(prefix..)
        .and_then(|rest| rest.get(..len))
        .ok_or(FrameError::Truncated {
            got: buf.len().saturating_sub(prefix),
            expected: len,
        })?;
    Ok((M::decode(body)?, prefix + body.len()))
}

async fn read_length<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Option<usize>, FrameError> {
    let mut len: u64 = 0;
    for i in 0..MAX_VARINT_LEN {
        let mut byte = [0u8; 1];
        let n = r.read(&mut byte).await?;
        if n == 0 {
            return match i {
                0 => Ok(None),
                _ => Err(FrameError::BadLength),
            };
        }
        if past_u64(i, byte[0]) {
            return Err(FrameError::BadLength);
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        // Checked on every byte: an over-long length is refused before it is even complete.
        if len > max as u64 {
            return Err(FrameError::TooLarge { len, max });
        }
        if byte[0] & 0x80 == 0 {
            return Ok(Some(len as usize));
        }
    }
    Err(FrameError::BadLength)
}

/// Reads one frame's bytes, or `None` at a clean end of stream before any byte.
pub async fn read_frame_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let Some(len) = read_length(r, max).await? else {
        return Ok(None);
    };
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    while buf.len() < len {
        let start = buf.len();
        buf.resize(start + (len - start).min(READ_CHUNK), 0);
        let n = r.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Err(FrameError::Truncated {
                got: start,
                expected: len,
            });
        }
    }
    // Grown in chunks, the buffer may have up to twice the capacity it needs; blocks decoded
    // from it share it, so it keeps only the frame's bytes.
    buf.shrink_to_fit();
    Ok(Some(Bytes::from(buf)))
}

/// Reads and decodes one frame of at most `max` bytes. End of stream before the frame is an error.
pub async fn read_frame<M: Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<M, FrameError> {
    let bytes = read_frame_bytes(r, max)
        .await?
        .ok_or(FrameError::Truncated { got: 0, expected: 1 })?;
    Ok(M::decode(bytes)?)
}

/// Encodes and writes one frame, refusing a message over `max` bytes.
pub async fn write_frame<M: Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &M,
    max: usize,
) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge { len: len as u64, max });
    }
    w.write_all(&encode_frame(msg)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;

    use super::*;
    use crate::pb;

    /// Found by the `frame` fuzz target: with no limit (`usize::MAX`), a ten-byte length near
    /// `u64::MAX` overflowed `prefix + len` (a panic with overflow checks, as in tests and fuzzing).
    #[test]
    fn huge_length_without_limit_is_truncated_not_overflow() {
        let mut frame = [0xffu8; 10];
        frame[9] = 0x01;
        let r = decode_frame::<pb::Status>(&frame, usize::MAX);
        assert!(matches!(r, Err(FrameError::Truncated { got: 0, .. })), "{r:?}");
    }

    /// A tenth prefix byte above 1 makes a value past `u64::MAX`: not a valid length, however the
    /// low bits come out, in the slice decoder and the async reader alike.
    #[test]
    fn length_past_u64_is_bad_length() {
        for max in [MAX_REQUEST, usize::MAX] {
            let mut frame = vec![0x80u8; 9];
            frame.push(0x02);
            let r = decode_frame::<pb::Status>(&frame, max);
            assert!(
                matches!(r, Err(FrameError::BadLength | FrameError::TooLarge { .. })),
                "{r:?}"
            );
            let r = block_on(read_frame_bytes(&mut &frame[..], max));
            assert!(
                matches!(r, Err(FrameError::BadLength | FrameError::TooLarge { .. })),
                "{r:?}"
            );
        }
    }

    const MAX_REQUEST: usize = crate::MAX_REQUEST_FRAME;
}
