"""Envelope encoding: deterministic header, strict decoding, padding, routing fields."""

from __future__ import annotations

import os

import cbor2
import pytest

from securechat.crypto import envelope as env
from securechat.crypto.errors import AuthenticationFailed, MalformedEnvelope

HEADER = env.Header(
    backend="ecdh:x25519",
    sender="alice",
    recipient="bob",
    ratchet_pub=bytes(range(32)),
    kem_ct=bytes(range(32, 64)),
    pn=3,
    n=7,
    message_id=bytes(range(16)),
    timestamp=1_700_000_000_000,
    room="#general",
)


def test_header_is_deterministic_cbor_and_round_trips() -> None:
    for header in (HEADER, HEADER._replace(room=None, handshake=b"hs" * 100, n=70000)):
        data = env.encode_header(header)
        assert cbor2.dumps(cbor2.loads(data), canonical=True) == data
        assert env.decode_header(data) == header


@pytest.mark.parametrize("n", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1])
@pytest.mark.parametrize("room", [None, "", "#r", "é" * 200])
@pytest.mark.parametrize("handshake", [None, b"h" * 300])
def test_header_encoder_matches_encode_header(
    n: int, room: str | None, handshake: bytes | None
) -> None:
    encoder = env.HeaderEncoder(
        "rsa:rsa2048", "a", "b", os.urandom(294), os.urandom(256), n, handshake
    )
    message_id = os.urandom(16)
    expected = env.encode_header(
        HEADER._replace(
            backend="rsa:rsa2048", sender="a", recipient="b", ratchet_pub=encoder.key[3],
            kem_ct=encoder.key[4], pn=n, n=n, message_id=message_id, room=room,
            handshake=handshake,
        )
    )  # fmt: skip
    assert encoder.encode(n, message_id, HEADER.timestamp, room) == expected


def test_non_canonical_encodings_are_refused() -> None:
    data = env.encode_header(HEADER)
    fields = cbor2.loads(data)
    reordered = cbor2.dumps(dict(sorted(fields.items())))  # plain lexicographic key order
    assert reordered != data
    with pytest.raises(MalformedEnvelope):
        env.decode_header(reordered)
    # "n": 7 written with a one-byte argument instead of inline.
    long_int = data.replace(b"\x61n\x07", b"\x61n\x18\x07", 1)
    for bad in (long_int, data + b"\x00", data[:-1], b"", b"\x80", b"\xa0"):
        with pytest.raises(MalformedEnvelope):
            env.decode_header(bad)


def test_protocol_v1_envelopes_are_refused_with_a_clear_message() -> None:
    fields = cbor2.loads(env.encode_header(HEADER))
    fields["v"] = 1
    with pytest.raises(MalformedEnvelope, match=r"protocol v1, no longer accepted.*upgrade"):
        env.decode_header(cbor2.dumps(fields, canonical=True))


@pytest.mark.parametrize(
    "change",
    [
        {"n": -1}, {"n": 2**32}, {"n": True}, {"pn": "3"}, {"id": b"short"}, {"v": 3},
        {"be": ""}, {"from": "x" * 300}, {"rp": b""}, {"rp": b"x" * 5000}, {"room": 5},
        {"extra": 1}, {"ts": 1.5},
    ],
)  # fmt: skip
def test_ill_typed_or_out_of_range_fields_are_refused(change: dict[str, object]) -> None:
    fields = cbor2.loads(env.encode_header(HEADER))
    fields.update(change)
    with pytest.raises(MalformedEnvelope):
        env.decode_header(cbor2.dumps(fields, canonical=True))
    with pytest.raises(MalformedEnvelope):
        env.check_fields(fields)


@pytest.mark.parametrize(
    ("length", "bucket"),
    [(0, 256), (255, 256), (256, 1024), (1023, 1024), (4095, 4096), (16383, 16384),
     (16384, 32768), (env.MAX_PLAINTEXT, env.MAX_PADDED)],
)  # fmt: skip
def test_padding_buckets_and_round_trip(length: int, bucket: int) -> None:
    plaintext = os.urandom(length)
    padded = env.pad(plaintext)
    assert len(padded) == bucket == env.bucket_size(length)
    assert env.unpad(padded) == plaintext


def test_padding_is_unambiguous() -> None:
    assert env.unpad(env.pad(b"ends with zeros\x00\x00")) == b"ends with zeros\x00\x00"
    assert env.unpad(env.pad(b"\x80")) == b"\x80"
    for bad in (bytes(256), b"abc" + bytes(253)):
        with pytest.raises(MalformedEnvelope):
            env.unpad(bad)
    with pytest.raises(ValueError):
        env.pad(bytes(env.MAX_PLAINTEXT + 1))


def test_seal_open_and_routing_fields() -> None:
    key = os.urandom(32)
    header_bytes = env.encode_header(HEADER)
    prefix = env.identity_prefix(b"A" * 32, b"B" * 32)
    mid = HEADER.message_id
    envelope = env.seal(key, mid, header_bytes, b"hello", prefix)
    assert env.routing_fields(envelope) == ("bob", "ecdh:x25519", HEADER.message_id)
    header, hb, ciphertext = env.parse_envelope(envelope)
    assert header == HEADER and env.open_envelope(key, mid, hb, ciphertext, prefix) == b"hello"
    # Swapping the identity keys changes the associated data.
    with pytest.raises(AuthenticationFailed):
        env.open_envelope(key, mid, hb, ciphertext, env.identity_prefix(b"B" * 32, b"A" * 32))
    # Another message id gives another key and nonce.
    with pytest.raises(AuthenticationFailed):
        env.open_envelope(key, bytes(16), hb, ciphertext, prefix)
    assert env.associated_data(b"A" * 32, b"B" * 32, hb) == prefix + hb


def test_bad_framing_is_refused() -> None:
    envelope = env.seal(os.urandom(32), HEADER.message_id, env.encode_header(HEADER), b"x", b"")
    for bad in (b"", b"\x02" + envelope[1:], envelope[:3], envelope[:-1], envelope + b"\x00"):
        with pytest.raises(MalformedEnvelope):
            env.parse_envelope(bad)
