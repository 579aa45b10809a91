#!/usr/bin/env bash
# Rebuilds seeds/ from testdata/vectors (needs jq and xxd). The seeds are committed; run this only
# when the vectors change. Layouts are those of src/{frame,message,validity}_check.rs.
set -euo pipefail
cd "$(dirname "$0")"
V=../testdata/vectors
rm -rf seeds && mkdir -p seeds/frame seeds/message seeds/validity

# hex_seed FILE PREFIX_HEX HEX: writes the bytes PREFIX ++ HEX to FILE.
hex_seed() { printf '%s%s' "$2" "$3" | xxd -r -p > "$1"; }
msg() { jq -r ".$1.$2" $V/messages.json; }
# The varint length of a byte count below 16,384, as hex.
varint() { if (( $1 < 128 )); then printf '%02x' "$1"; else printf '%02x%02x' $(( ($1 & 127) | 128 )) $(( $1 >> 7 )); fi; }

# frame: [limit, mode] ++ stream. limit 0 request / 1 response; mode bits 0-2 message kind,
# bit 3 Pending first, bits 4-7 read chunk size (cubed).
hex_seed seeds/frame/status           0000 "$(msg status frame)"
hex_seed seeds/frame/range_request    0019 "$(msg blocks_by_range_request frame)"
hex_seed seeds/frame/root_request     0022 "$(msg blocks_by_root_request frame)"
hex_seed seeds/frame/range_response   0133 "$(msg blocks_by_range_response frame)"
hex_seed seeds/frame/error_response   01b3 "$(msg error_response frame)"
block1=$(jq -r '.[0].block_protobuf' $V/blocks.json)
hex_seed seeds/frame/block            0124 "$(varint $(( ${#block1} / 2 )))$block1"
# Two frames back to back: the reader must stop at the first.
hex_seed seeds/frame/two_frames       0001 "$(msg blocks_by_range_request frame)$(msg blocks_by_range_request frame)"

# message: [kind] ++ protobuf. 0 Status, 1 range, 2 root, 3 response, 4 Block, 5 BlockHeader.
hex_seed seeds/message/status         00 "$(msg status protobuf)"
hex_seed seeds/message/range_request  01 "$(msg blocks_by_range_request protobuf)"
hex_seed seeds/message/root_request   02 "$(msg blocks_by_root_request protobuf)"
hex_seed seeds/message/range_response 03 "$(msg blocks_by_range_response protobuf)"
hex_seed seeds/message/error_response 03 "$(msg error_response protobuf)"
hex_seed seeds/message/block          04 "$block1"
hex_seed seeds/message/genesis        04 "$(jq -r .block_protobuf $V/genesis.json)"
# The header is field 1 of the block: tag 0a, length 6f, then its 111 bytes.
hex_seed seeds/message/header         05 "${block1:4:222}"

# validity: [0] ++ protobuf Block of the vector chain: the vectors' valid and invalid blocks.
for i in 0 2; do hex_seed seeds/validity/block_$i 00 "$(jq -r ".[$i].block_protobuf" $V/blocks.json)"; done
n=$(jq 'length' $V/invalid_blocks.json)
for (( i = 0; i < n; i++ )); do
  b=$(jq -r ".[$i].block_protobuf // empty" $V/invalid_blocks.json)
  [[ -n $b ]] && hex_seed seeds/validity/invalid_$i 00 "$b"
done
# And a few inputs for the structured generator.
printf '\x01\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f' > seeds/validity/structured_a
printf '\x11\x03\x02\x10hello, syncnode!\x05\x07\xff\x00\x01' > seeds/validity/structured_b
