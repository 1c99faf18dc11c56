"""HeaderDecoder (the receive path's per-chain fast decoder) agrees with decode_header."""

from __future__ import annotations

import random

import pytest

from securechat.crypto.errors import MalformedEnvelope
from securechat.crypto.header import Header, HeaderDecoder, decode_header, encode_header

BASE = Header("ecdh:x25519", "alice", "bob", b"\x01" * 32, b"\x02" * 32, 3, 0, b"\x03" * 16, 0)


@pytest.mark.parametrize("handshake", [None, b"\x04" * 300])
def test_same_chain_headers_decode_exactly_as_the_full_decoder(handshake: bytes | None) -> None:
    base = BASE._replace(handshake=handshake)
    decoder = HeaderDecoder(base)
    for n in (0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1):
        for ts in (0, 23, 24, 1_700_000_000_000, 2**63 - 1):
            for room in (None, "", "r", "é" * 100, "x" * 256):
                header = base._replace(
                    n=n, timestamp=ts, room=room, message_id=bytes([n % 256]) * 16
                )
                data = encode_header(header)
                assert decoder.decode(data) == decode_header(data) == header


def test_other_chains_and_non_canonical_encodings_fall_back() -> None:
    decoder = HeaderDecoder(BASE)
    other = encode_header(BASE._replace(ratchet_pub=b"\x09" * 32))
    assert decoder.decode(other) is None
    data = encode_header(BASE._replace(n=5))
    non_minimal = data[:3] + b"\x18\x05" + data[4:]
    assert decoder.decode(non_minimal) is None
    with pytest.raises(MalformedEnvelope):
        decode_header(non_minimal)
    assert decoder.decode(data + b"\x00") is None
    bad_room = encode_header(BASE._replace(room="ab"))[:-2] + b"\xff\xfe"
    assert decoder.decode(bad_room) is None


def test_mutations_never_accepted_unless_the_full_decoder_agrees() -> None:
    rng = random.Random(7)
    decoder = HeaderDecoder(BASE)
    seeds = [encode_header(BASE._replace(n=n, room=r)) for n in (1, 300) for r in (None, "room")]
    for _ in range(20000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos]
            else:
                data.insert(pos, rng.randrange(256))
        fast = decoder.decode(bytes(data))
        if fast is not None:
            assert fast == decode_header(bytes(data))
