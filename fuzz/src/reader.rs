//! An `AsyncRead` over a byte slice that hands out bytes in chunks of a chosen size, returns
//! `Pending` every other poll (waking itself at once), and records what the reader under test asked
//! for: how many bytes it took and the largest buffer it offered in one read.
//!
//! The frame reader sizes its buffer and then offers exactly the unfilled part to `poll_read`, so
//! the largest offered slice bounds the memory it committed ahead of the data actually sent.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::AsyncRead;

/// A slice served in chunks, with a record of every read.
#[derive(Debug)]
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
    pending: bool,
    pending_next: bool,
    /// The largest buffer offered to one `poll_read`.
    pub largest_offer: usize,
    /// For each read: bytes already handed out before it, and the length of the buffer offered.
    pub offers: Vec<(usize, usize)>,
}

impl<'a> ChunkedReader<'a> {
    /// Serves `data` at most `chunk` bytes per read (0 means no limit); `pending` makes every other
    /// poll return `Pending` first.
    pub fn new(data: &'a [u8], chunk: usize, pending: bool) -> Self {
        ChunkedReader {
            data,
            pos: 0,
            chunk: if chunk == 0 { usize::MAX } else { chunk },
            pending,
            pending_next: pending,
            largest_offer: 0,
            offers: Vec::new(),
        }
    }

    /// Bytes handed out so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending_next {
            this.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.pending_next = this.pending;
        this.largest_offer = this.largest_offer.max(buf.len());
        // Bounded: a frame read makes at most 10 prefix reads plus one per chunk of body.
        if this.offers.len() < 100_000 {
            this.offers.push((this.pos, buf.len()));
        }
        let n = buf.len().min(this.chunk).min(this.data.len() - this.pos);
        buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}
