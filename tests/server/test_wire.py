"""Tests for the wire codec: round trips, framing and strict decoding."""

from __future__ import annotations

import itertools
import struct

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.protocols.basic import Int32StringReceiver

from securechat import wire
from tools.gen_protocol_examples import MID, examples

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=64)
ids = st.integers(min_value=0, max_value=wire.MAX_ID)
mids = st.binary(min_size=16, max_size=16)
payloads = st.binary(max_size=600)
send_items = st.builds(
    wire.SendItem, names, st.sampled_from(["ecdh", "dh", "rsa"]), mids, payloads,
    st.none() | names, st.none() | st.binary(min_size=32, max_size=32),
)  # fmt: skip
deliver_items = st.builds(
    wire.DeliverItem, st.integers(0, 2**62), names, names, mids,
    st.floats(min_value=0, max_value=2e9), payloads, st.none() | names,
)  # fmt: skip
messages = st.one_of(
    st.builds(wire.Send, id=ids, items=st.lists(send_items, max_size=8).map(tuple)),
    st.builds(wire.Deliver, items=st.lists(deliver_items, max_size=8).map(tuple)),
    st.builds(wire.Ack, up_to=ids),
    st.builds(wire.Ping, id=ids),
    st.builds(wire.Presence, user=names, online=st.booleans()),
    st.builds(
        wire.Error, id=st.none() | ids, code=names, message=st.text(max_size=50),
        retry_after=st.none() | st.floats(min_value=0, max_value=1e6),
    ),
    st.builds(
        wire.PublishPrekeys, id=ids, backend=names,
        one_time=st.lists(
            st.builds(wire.OneTimePrekey, st.integers(0, 2**32 - 1), st.binary(max_size=64)),
            max_size=5,
        ).map(tuple),
        signed_prekey=st.none() | st.binary(max_size=64),
    ),
    st.builds(wire.Online, id=ids, users=st.lists(names, max_size=5).map(tuple)),
)  # fmt: skip


class _Collector(Int32StringReceiver):
    """The same framing the server and client use, collecting decoded messages."""

    MAX_LENGTH = 1 << 20

    def __init__(self) -> None:
        self.got: list[wire.Message] = []

    def stringReceived(self, string: bytes) -> None:
        self.got.append(wire.decode(string))


@given(st.lists(messages, max_size=6), st.lists(st.integers(0, 10_000), max_size=8))
def test_split_frames_decode_to_same_messages(msgs: list[wire.Message], cuts: list[int]) -> None:
    """Arbitrary message lists, cut at arbitrary points, decode to the same messages."""
    stream = b"".join(wire.encode_frame(m) for m in msgs)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    receiver = _Collector()
    for a, b in itertools.pairwise(points):
        receiver.dataReceived(stream[a:b])
    assert receiver.got == msgs


def test_every_type_round_trips() -> None:
    """Each registered message type encodes and decodes to an equal object."""
    samples = examples()
    assert {type(m) for m in samples} == set(wire.MESSAGE_TYPES)
    for msg in samples:
        assert wire.decode(wire.encode(msg)) == msg


def test_frame_prefix_is_big_endian_length() -> None:
    """encode_frame prefixes the CBOR body with its 4-byte big-endian length."""
    msg = wire.Ping(id=9)
    frame = wire.encode_frame(msg)
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert frame[4:] == wire.encode(msg)


def _raw(obj: object) -> bytes:
    return cbor2.dumps(obj)


def _err(frame: bytes) -> wire.ProtocolError:
    with pytest.raises(wire.ProtocolError) as info:
        wire.decode(frame)
    return info.value


SEND_ITEM = {"to": "bob", "backend": "ecdh", "mid": MID, "payload": b"x"}


@pytest.mark.parametrize(
    ("frame", "code", "rid"),
    [
        (b"\xff\xfe garbage", wire.E_BAD_FRAME, None),
        (b"\xa1", wire.E_BAD_FRAME, None),
        (_raw({"type": "ping", "id": 1}) + b"\x00", wire.E_BAD_FRAME, None),
        (_raw(cbor2.CBORTag(0, "2020-01-01T00:00:00Z")), wire.E_BAD_FRAME, None),
        (_raw({"type": "ping", "id": cbor2.CBORTag(2, b"\x01")}), wire.E_BAD_FRAME, None),
        (b"\xa2\x64type\x64ping\x64type\x64pong", wire.E_BAD_FRAME, None),
        (b"\xa1\x01\x01", wire.E_BAD_FRAME, None),
        (b"\x81" * 20 + b"\x01", wire.E_BAD_FRAME, None),
        (_raw([1, 2, 3]), wire.E_NOT_A_MAP, None),
        (_raw({"id": 5}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": 7, "id": 5}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "launch_missiles", "id": 5}), wire.E_UNKNOWN_TYPE, 5),
        (_raw({"type": "ping"}), wire.E_BAD_REQUEST, None),
        (_raw({"type": "ping", "id": -1}), wire.E_BAD_REQUEST, None),
        (_raw({"type": "ping", "id": True}), wire.E_BAD_REQUEST, None),
        (_raw({"type": "ping", "id": 5, "extra": 1}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "who", "id": 5, "user": None}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "login_password", "id": 5, "user": "a", "password": 1}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "login_password", "id": 5, "user": "a" * 65, "password": "p"}),
         wire.E_TOO_LARGE, 5),
        (_raw({"type": "login_password", "id": 5, "user": "", "password": "p"}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "login_publickey", "id": 5, "user": "a", "nonce": b"n",
               "signature": b"s"}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [SEND_ITEM] * (wire.MAX_BATCH + 1)}),
         wire.E_TOO_LARGE, 5),
        (_raw({"type": "send", "id": 5, "items": {"to": "bob"}}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [1]}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [{**SEND_ITEM, "mid": b"short"}]}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [{**SEND_ITEM, "extra": 1}]}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [{**SEND_ITEM, "to": 3}]}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [{**SEND_ITEM, "payload": "str"}]}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [{**SEND_ITEM, "room": 3}]}),
         wire.E_BAD_REQUEST, 5),
        (_raw({"type": "send", "id": 5, "items": [{"to": "bob"}]}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "presence", "user": "bob", "online": 1}), wire.E_BAD_REQUEST, None),
        (_raw({"type": "online", "id": 5, "users": ["a", 2]}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "publish_prekeys", "id": 5, "backend": "ecdh",
               "one_time": [{"key_id": 1}]}), wire.E_BAD_REQUEST, 5),
        (_raw({"type": "error", "code": "x", "message": "y", "retry_after": -1}),
         wire.E_BAD_REQUEST, None),
        (_raw({"type": "error", "code": "x", "message": "y", "retry_after": float("nan")}),
         wire.E_BAD_REQUEST, None),
    ],
)  # fmt: skip
def test_strict_decoding_errors(frame: bytes, code: str, rid: int | None) -> None:
    """Malformed frames raise ProtocolError with the right code and the request id."""
    error = _err(frame)
    assert (error.code, error.request_id) == (code, rid)
    assert error.message


def test_optional_null_is_absent() -> None:
    """An explicit null in an optional field means the same as leaving it out."""
    msg = wire.decode(_raw({"type": "hello", "id": 1, "version": 1, "agent": None}))
    assert msg == wire.Hello(id=1, version=1)


def test_deliver_item_uses_from_key() -> None:
    """Deliver items carry the sender under the key ``from``, as the docs say."""
    item = wire.DeliverItem(3, "alice", "ecdh", MID, 5.0, b"p", "ops")
    body = cbor2.loads(wire.encode(wire.Deliver(items=(item,))))
    assert body["items"][0]["from"] == "alice"
    assert body["items"][0]["room"] == "ops"


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_escape_as_other_errors(data: bytes) -> None:
    """Whatever the bytes, decode returns a message or raises ProtocolError."""
    try:
        msg = wire.decode(data)
    except wire.ProtocolError as e:
        assert e.code in {
            wire.E_BAD_FRAME, wire.E_NOT_A_MAP, wire.E_BAD_REQUEST,
            wire.E_UNKNOWN_TYPE, wire.E_TOO_LARGE,
        }  # fmt: skip
    else:
        assert isinstance(msg, wire.Message)


def test_protocol_doc_examples_decode_and_are_current() -> None:
    """docs/protocol.md holds exactly the generated reference, and its frames decode."""
    from tools.gen_protocol_examples import DOC, extract, render

    text = DOC.read_text(encoding="utf-8")
    assert render() in text, "run: python tools/gen_protocol_examples.py --write"
    frames = extract(text)
    assert len(frames) == len(wire.MESSAGE_TYPES)
    for frame, expected in zip(frames, examples(), strict=True):
        assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
        assert wire.decode(frame[4:]) == expected


send_replies = st.builds(
    wire.SendReply, id=ids, results=st.lists(
        st.builds(wire.SendResult, st.sampled_from(["delivered", "queued"]), st.none(), st.none())
        | st.builds(wire.SendResult, st.just("error"), names,
                    st.none() | st.floats(min_value=0, max_value=1e6)),
        max_size=30,
    ).map(tuple),
)  # fmt: skip


@given(messages | send_replies)
def test_hot_path_codecs_match_the_generic_ones(msg: wire.Message) -> None:
    """The hand-built send_reply/deliver encoders and the send/ack decoders give exactly
    what the generic, spec-driven code gives."""
    body = wire._encode_generic(msg)
    assert wire.encode(msg) == body
    assert wire.decode(body) == msg


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"type": "ack", "up_to": -1}, wire.E_BAD_REQUEST),
        ({"type": "ack", "up_to": True}, wire.E_BAD_REQUEST),
        ({"type": "ack", "id": 1}, wire.E_BAD_REQUEST),
        ({"type": "send", "id": 1, "extra": []}, wire.E_BAD_REQUEST),
        ({"type": "send", "id": -1, "items": []}, wire.E_BAD_REQUEST),
        ({"type": "send", "id": 1, "items": {}}, wire.E_BAD_REQUEST),
        ({"type": "send", "id": 1, "items": [{"to": "b"}]}, wire.E_BAD_REQUEST),
    ],
)
def test_hot_path_decoders_stay_strict(fields: dict[str, object], code: str) -> None:
    """Near misses of the send/ack fast path still get the generic typed errors."""
    with pytest.raises(wire.ProtocolError) as e:
        wire.decode(cbor2.dumps(fields))
    assert e.value.code == code
