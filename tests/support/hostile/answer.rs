//! How each [`Misbehaviour`] bends the answer to a range request.

use super::*;

/// What a hostile peer answers to one range request: the frame bytes, or a way to not answer.
pub(super) enum Answer {
    Frame(Vec<u8>),
    Silence,
    Trickle(Vec<u8>),
    /// Drops the stream unanswered (yamux resets it).
    Reset,
}

/// A response frame that refuses with `code` (`pb::ResponseCode`).
pub(super) fn refusal_frame(code: pb::ResponseCode) -> Vec<u8> {
    encode_frame(&pb::BlocksResponse {
        code: code as i32,
        blocks: Vec::new(),
        error_message: "no".to_owned(),
    })
}

pub(super) fn ok_frame(blocks: &[Block]) -> Vec<u8> {
    encode_frame(&pb::BlocksResponse {
        code: 0,
        blocks: blocks.iter().map(pb::Block::from).collect(),
        error_message: String::new(),
    })
}

/// LEB128 of `n`.
pub(super) fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The answer of a peer misbehaving as `how` to a request for `count` blocks from `start`, and
/// whether it is bent (differs from the honest answer).
pub(super) fn answer(chain: &Chain, how: Misbehaviour, start: Height, count: u64) -> (Answer, bool) {
    let honest = || chain.range(start, count);
    match how {
        Misbehaviour::WrongHeights => {
            let blocks = chain.range(start.saturating_add(1), count);
            let bent = !blocks.is_empty();
            (Answer::Frame(ok_frame(&blocks)), bent)
        }
        Misbehaviour::Unrequested => {
            let mut blocks = honest();
            let extra = chain.range(start.saturating_add(count), 1);
            // Past the head, any block will do: it was not asked for either.
            let extra = extra
                .into_iter()
                .next()
                .unwrap_or_else(|| chain.blocks[1].clone());
            blocks.push(extra);
            (Answer::Frame(ok_frame(&blocks)), true)
        }
        Misbehaviour::Unlinked => {
            let blocks = chain.unlinked(start, count);
            let bent = !blocks.is_empty();
            (Answer::Frame(ok_frame(&blocks)), bent)
        }
        Misbehaviour::OversizeFrame => {
            let mut bytes = varint(MAX_RESPONSE_FRAME as u64 + 1);
            bytes.extend_from_slice(&[0u8; 1024]);
            (Answer::Frame(bytes), true)
        }
        Misbehaviour::Garbage => {
            // Tag 0x0f is field 1 with wire type 7, which does not exist.
            let mut bytes = varint(64);
            bytes.extend_from_slice(&[0x0fu8; 64]);
            (Answer::Frame(bytes), true)
        }
        Misbehaviour::Silent => (Answer::Silence, true),
        Misbehaviour::ClaimsAndRefuses => (
            Answer::Frame(refusal_frame(pb::ResponseCode::ResourceUnavailable)),
            true,
        ),
        Misbehaviour::ClaimsAndErrs => (Answer::Frame(refusal_frame(pb::ResponseCode::ServerError)), true),
        Misbehaviour::ClaimsAndResets => (Answer::Reset, true),
        Misbehaviour::Trickle => (Answer::Trickle(ok_frame(&honest())), true),
        Misbehaviour::LyingStatus | Misbehaviour::Flood => {
            let blocks = honest();
            let bent = blocks.is_empty() && how == Misbehaviour::LyingStatus;
            (Answer::Frame(ok_frame(&blocks)), bent)
        }
        _ => {
            let mut blocks = honest();
            let bent = chain.bend_last(how, &mut blocks);
            (Answer::Frame(ok_frame(&blocks)), bent)
        }
    }
}
