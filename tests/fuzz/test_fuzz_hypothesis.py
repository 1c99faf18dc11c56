"""Fuzzing under pytest: hypothesis drives the oracles of the atheris harnesses in ``fuzz/``.

atheris needs a native wheel and minutes of CPU; these tests need neither, so every test
run fuzzes a little. They use the *same* checks as the harnesses (``fuzz/fuzz_wire.py``,
``fuzz/fuzz_envelope.py``), so a property broken here is a harness crash there and vice
versa. Inputs come in three kinds, because each reaches a different depth:

* arbitrary bytes (the framing and CBOR layers);
* valid frames and envelopes (``fuzz/make_corpus.py``) with bits flipped, truncated,
  extended or spliced (the field checks behind a well-formed map);
* valid CBOR of the wrong shape, built by hypothesis' recursive strategies: maps with a
  real ``type`` or real header keys but values of any type or nesting (the typed checks).

Budget: about 3,000 examples in total and well under 30 s on a 2-core machine, no
deadline (a slow example is not a failure). ``SECURECHAT_FUZZ_SCALE=N`` multiplies the
number of examples; ``scripts/fuzz-ci`` uses it when atheris is unavailable.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.fuzz_envelope import check_envelope, check_header, check_unpad
from fuzz.fuzz_envelope import check_input as check_envelope_input
from fuzz.fuzz_wire import check_decode, check_stream
from fuzz.make_corpus import envelope_seeds, session_streams, wire_seeds
from securechat import wire
from securechat.crypto.envelope import ENVELOPE_FORMAT, TAG_SIZE, encode_header

SCALE = max(1, int(os.environ.get("SECURECHAT_FUZZ_SCALE", "1")))
HEADER = struct.Struct(">I")


def budget(examples: int) -> settings:
    """Settings for one test: ``examples`` times the scale, no deadline, no DB noise."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


# -- strategies ---------------------------------------------------------------------------------

BODIES = [s for s in wire_seeds() if s[:1] != b"\x00"]  # one CBOR map each
STREAMS = session_streams()  # length-prefixed sessions (they start with a 0x00 length byte)
ENVELOPES = envelope_seeds()
TYPES = sorted({wire.decode(b).TYPE for b in BODIES})
FIELD_NAMES = sorted({k for b in BODIES for k in cbor2.loads(b)} | {"from", "seq", "time"})
HEADER_KEYS = ["v", "be", "from", "to", "rp", "ct", "pn", "n", "id", "ts", "room", "hs"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed after a few bit flips, byte writes, truncations, extensions or splices."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "extend", "splice", "dup"]))
        if op in ("flip", "byte") and data:
            at = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            else:
                data[at] = draw(st.integers(0, 255))
        elif op == "truncate" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + other[draw(st.integers(0, len(other))) :]
        elif op == "dup" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[start:start] = data[start : draw(st.integers(start, len(data)))]
    return bytes(data)


#: Any CBOR data model value the decoders might meet, nested a few levels deep. Integers go
#: past 64 bits (bignums) and floats include NaN and infinities on purpose.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(TYPES + FIELD_NAMES)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def wrong_shape_messages(draw: st.DrawFn) -> dict[Any, Any]:
    """A map with a real ``type`` (usually) and real field names holding arbitrary values."""
    m: dict[Any, Any] = {}
    if draw(st.integers(0, 9)):
        m["type"] = draw(st.sampled_from(TYPES))
    names = draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=6, unique=True))
    for name in names:
        m[name] = draw(VALUES)
    if draw(st.booleans()):
        m["items"] = draw(
            st.lists(st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES), max_size=3)
        )
    return m


@st.composite
def wrong_shape_headers(draw: st.DrawFn) -> bytes:
    """Header keys (a subset, any order) with values of any type; sometimes canonical."""
    keys = draw(st.lists(st.sampled_from(HEADER_KEYS), max_size=12, unique=True))
    fields = {k: draw(VALUES) for k in keys}
    return cbor2.dumps(fields, canonical=draw(st.booleans()))


# -- the frame decoder ------------------------------------------------------------------------


@budget(600)
@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes(body: bytes) -> None:
    """Random bytes: a typed ProtocolError or a message that round-trips, nothing else."""
    check_decode(body)


@budget(700)
@given(mutated(BODIES))
def test_decode_mutated_frames(body: bytes) -> None:
    """Valid frames of every type, damaged: still only ProtocolError."""
    check_decode(body)


@budget(500)
@given(wrong_shape_messages())
def test_decode_wrong_structures(m: dict[Any, Any]) -> None:
    """Well-formed CBOR maps with known types and field names but ill-typed values."""
    check_decode(cbor2.dumps(m))


# -- a server connection (framing, login state, handlers) --------------------------------------


@budget(200)
@given(mutated(BODIES) | wrong_shape_messages().map(cbor2.dumps))
def test_server_answers_bad_frames_with_typed_errors(body: bytes) -> None:
    """One bad frame: no exception out of dataReceived, no internal-error, valid replies."""
    check_stream(frame(body))


@budget(200)
@given(mutated(STREAMS))
def test_server_survives_mutated_sessions(stream: bytes) -> None:
    """Damaged register/login/send sessions reach the handlers behind the login."""
    check_stream(stream)


@budget(100)
@given(st.lists(st.sampled_from(BODIES) | mutated(BODIES), min_size=1, max_size=6))
def test_server_survives_frame_sequences(bodies: list[bytes]) -> None:
    """Any order of valid and damaged frames on one connection."""
    check_stream(STREAMS[0][: len(STREAMS[0]) // 2] + b"".join(frame(b) for b in bodies))


# -- the envelope -------------------------------------------------------------------------------


@budget(400)
@given(st.binary(max_size=400))
def test_envelope_arbitrary_bytes(data: bytes) -> None:
    """Random bytes as envelope, header and padded plaintext: MalformedEnvelope or valid."""
    check_envelope_input(data)


@budget(400)
@given(mutated(ENVELOPES))
def test_envelope_mutated(data: bytes) -> None:
    """Valid envelopes and headers, damaged: one encoding per header, consistent routing."""
    check_envelope_input(data)


@budget(400)
@given(wrong_shape_headers())
def test_header_wrong_structures(header: bytes) -> None:
    """CBOR maps over the header keys with ill-typed values, bare and inside an envelope."""
    check_header(header)
    ciphertext = bytes(256 + TAG_SIZE)
    if len(header) < 1 << 16:
        check_envelope(
            bytes([ENVELOPE_FORMAT]) + len(header).to_bytes(2, "big") + header + ciphertext
        )


@budget(100)
@given(st.binary(max_size=64), st.integers(0, 300))
def test_unpad_only_strips_padding(data: bytes, zeros: int) -> None:
    """Random tails, and real padding of any length, are handled exactly."""
    check_unpad(data)
    check_unpad(data + b"\x80" + bytes(zeros))


def test_seeds_are_valid() -> None:
    """The corpus is what it claims: every seed passes, so mutations start from valid input."""
    for body in BODIES:
        assert check_decode(body) is not None
    for stream in STREAMS:
        replies = check_stream(stream)
        assert any(isinstance(r, wire.LoggedIn) for r in replies) or stream is STREAMS[-1]
    headers = [check_envelope(e) or check_header(e) for e in ENVELOPES]
    assert all(headers)
    assert encode_header(headers[0]) in ENVELOPES[0]


# -- known findings -------------------------------------------------------------------------------


def test_error_reply_for_long_unknown_field_stays_decodable() -> None:
    """A frame with a 2,000-character unknown key must still get a decodable error reply."""
    check_stream(frame(cbor2.dumps({"type": "ping", "id": 1, "x" * 2000: 1})))
