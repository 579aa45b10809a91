//! The message target: every message of `syncnode.proto`, decoded from arbitrary bytes and
//! converted to its typed form, and typed values generated structurally and sent round the wire.
//!
//! Input: byte 0 picks the message (`% 6`) and the mode (`/ 6 % 3`): raw protobuf bytes, a
//! near-valid wire message, or a typed value; the rest is the bytes or the generator's input.
//!
//! Invariants checked:
//! - decoding is an error or a message whose encoding decodes to it again, is as long as
//!   `encoded_len` says, and is a fixed point (re-encoding the decoded encoding gives the same bytes);
//! - conversion succeeds exactly when an independent check finds no defect, an error names one of
//!   the defects actually present, and a successful conversion is lossless (converting back gives
//!   the same wire message);
//! - a typed value goes to the wire, through a frame and back to the same typed value.

use arbitrary::Unstructured;
use syncnode_proto::pb;

use crate::frame_check::check_round_trip;
use crate::wire::Wire;

/// Runs the message target on one input.
pub fn check(data: &[u8]) {
    let [selector, rest @ ..] = data else {
        return;
    };
    match selector % 6 {
        0 => check_kind::<pb::Status>(*selector / 6 % 3, rest),
        1 => check_kind::<pb::BlocksByRangeRequest>(*selector / 6 % 3, rest),
        2 => check_kind::<pb::BlocksByRootRequest>(*selector / 6 % 3, rest),
        3 => check_kind::<pb::BlocksResponse>(*selector / 6 % 3, rest),
        4 => check_kind::<pb::Block>(*selector / 6 % 3, rest),
        _ => check_kind::<pb::BlockHeader>(*selector / 6 % 3, rest),
    }
}

fn check_kind<M: Wire>(mode: u8, rest: &[u8]) {
    let mut u = Unstructured::new(rest);
    match mode {
        0 => {
            if let Ok(msg) = M::decode(rest) {
                check_encoding(&msg);
                check_conversion(&msg);
            }
        }
        1 => {
            if let Ok(msg) = M::near_valid(&mut u) {
                check_encoding(&msg);
                check_conversion(&msg);
                check_round_trip(&msg, usize::MAX, 0, false);
            }
        }
        _ => {
            if let Ok(Some(typed)) = M::typed(&mut u) {
                let msg = M::back(&typed);
                check_encoding(&msg);
                check_round_trip(&msg, usize::MAX, 0, false);
                let decoded = M::decode(&msg.encode_to_vec()[..]).expect("own encoding decodes");
                assert_eq!(
                    decoded.convert().as_ref(),
                    Ok(&typed),
                    "typed value lost on the wire"
                );
            }
        }
    }
}

/// Encoding a decoded message decodes to it again and is a fixed point of decode then encode.
fn check_encoding<M: Wire>(msg: &M) {
    let bytes = msg.encode_to_vec();
    assert_eq!(bytes.len(), msg.encoded_len());
    let again = M::decode(&bytes[..]).expect("own encoding decodes");
    assert_eq!(&again, msg);
    assert_eq!(again.encode_to_vec(), bytes, "encoding is not a fixed point");
}

/// Conversion fails exactly on a defect, names a real one, and is lossless when it succeeds.
fn check_conversion<M: Wire>(msg: &M) {
    let defects = msg.defects();
    match msg.convert() {
        Ok(typed) => {
            assert!(defects.is_empty(), "converted despite {defects:?}: {msg:?}");
            assert_eq!(&M::back(&typed), msg, "conversion is lossy");
        }
        Err(e) => assert!(
            defects.contains(&e),
            "refused with {e:?}, defects are {defects:?}"
        ),
    }
}
