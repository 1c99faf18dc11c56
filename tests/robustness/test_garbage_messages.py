"""Hypothesis-generated garbage at the message layer, through the in-memory relay.

Every frame is well framed CBOR, but its contents are not what the protocol allows:
maps with a known ``type`` and missing, extra, ill-typed, oversized or nested fields,
unknown types, and non-map items. The oracle is :func:`securechat.wire.decode` itself:
whenever it rejects a frame, the server must answer with an ``error`` of the same code
and request id (and close the connection for ``bad-frame``); whenever it accepts one,
the server may answer anything but ``internal-error``. Nothing may escape the protocol
or be logged as a failure, and a second pair of logged-in users keeps chatting between
every two examples.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.logger import globalLogPublisher

from securechat import wire
from securechat.wiremessages import _DECODERS
from tests.server.harness import Client, Harness, delivered, item

MAX_EXAMPLES = 300

SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=24)
)
ANY = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), inner, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = {"k": [value]}
    return value


#: Values over every wire limit, and structures deeper than the decoder's max_depth.
HUGE = st.sampled_from(
    [
        "n" * (wire.MAX_NAME + 1),
        "t" * (wire.MAX_TEXT + 1),
        b"k" * (wire.MAX_KEY + 1),
        [{}] * (wire.MAX_BATCH + 1),
        [0] * (wire.MAX_ONE_TIME + 1),
        2**63,
        2**64 - 1,
        -(2**63),
        2**70,  # a bignum: a CBOR tag, which the protocol does not allow
        float("inf"),
        float("nan"),
        nested(4),
        nested(12),
    ]
)
NAME = st.sampled_from(["alice", "bob", "mallory", "nobody", "ecdh", "rsa", "#room", "admin"])
NAME = NAME | st.text(max_size=6)
COUNT = st.integers(min_value=0, max_value=2**32)
SEND_ITEM = st.fixed_dictionaries(
    {"to": NAME, "backend": NAME, "mid": st.binary(min_size=15, max_size=17), "payload": ANY},
    optional={"room": NAME, "extra": ANY},
)
PLAUSIBLE: dict[Any, st.SearchStrategy[Any]] = {
    wire.ID: st.integers(min_value=0, max_value=2**63 - 1) | st.sampled_from([-1, 2**63]),
    wire.COUNT: COUNT,
    wire.TEXT: st.text(max_size=30),
    wire.SECRET: st.text(max_size=30),
    wire.NAME: NAME,
    wire.NAMES: st.lists(NAME, max_size=3),
    wire.BOOL: st.booleans(),
    wire.FLOAT: st.floats(),
    wire.CHALLENGE: st.binary(min_size=31, max_size=33),
    wire.NONCE: st.binary(min_size=31, max_size=33),
    wire.KEY: st.binary(max_size=40),
    wire.ONE_TIME: st.lists(st.fixed_dictionaries({"key_id": COUNT, "key": ANY}), max_size=3),
    wire.SEND_ITEMS: st.lists(SEND_ITEM, max_size=3),
}


@st.composite
def message_maps(draw: st.DrawFn) -> Any:
    """A CBOR item: mostly maps shaped like one message type, each field perturbed."""
    if draw(st.integers(0, 19)) == 0:
        return draw(ANY)  # not a map at all (or a map without a usable type)
    kind = draw(st.sampled_from(sorted(_DECODERS)) | st.text(max_size=10))
    m: dict[Any, Any] = {"type": kind}
    if draw(st.integers(0, 9)) == 0:
        m["type"] = draw(ANY)
    _, spec = _DECODERS.get(kind, (None, ()))
    for name, check, _optional in spec:
        how = draw(st.sampled_from(["plausible", "plausible", "plausible", "omit", "any", "huge"]))
        if how == "plausible":
            m[name] = draw(PLAUSIBLE.get(check, ANY))
        elif how == "any":
            m[name] = draw(ANY)
        elif how == "huge":
            m[name] = draw(HUGE)
    if draw(st.booleans()):
        m["id"] = draw(PLAUSIBLE[wire.ID])
    m.update(draw(st.dictionaries(st.text(max_size=6), ANY, max_size=2)))
    return m


class World:
    """Alice and bob chat; two attackers (one logged in as mallory, one not) send garbage."""

    def __init__(self) -> None:
        self.h = Harness()
        self.alice, self.bob = self.h.online("alice"), self.h.online("bob")
        self.logged_in = self.h.online("mallory")
        self.anonymous = self.h.connect()
        self.failures: list[dict[str, Any]] = []
        self.examples = self.rejected = self.closed = self.chats = 0

    def observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.failures.append(event)

    def check(self, value: Any, as_user: bool) -> None:
        self.examples += 1
        body = cbor2.dumps(value)
        try:
            wire.decode(body)
            expected: wire.ProtocolError | None = None
        except wire.ProtocolError as e:
            expected = e
        conn = self.logged_in if as_user else self.anonymous
        if not as_user and len(body) > self.h.factory.admission.frame_bytes:
            # Before login a frame has a smaller limit: whatever it holds, it is too large.
            expected = wire.ProtocolError(wire.E_TOO_LARGE, "frame too large")
        conn.send_raw(struct.pack(">I", len(body)) + body)  # must not raise
        self.h.clock.advance(0)
        errors = [m for m in conn.received() if isinstance(m, wire.Error)]
        codes = [(e.code, e.id) for e in errors]
        if expected is not None:
            self.rejected += 1
            assert (expected.code, expected.request_id) in codes, (value, codes)
            closes = (wire.E_BAD_FRAME, wire.E_TOO_LARGE)
            assert not conn.closed or expected.code in closes, (value, codes)
            if expected.code == wire.E_BAD_FRAME:
                assert conn.closed, value
        assert wire.E_INTERNAL not in [c for c, _ in codes], (value, codes)
        assert not self.failures, self.failures
        if conn.closed:
            self.closed += 1
            conn.drop()
            if as_user:
                self.logged_in = self.h.online("mallory")
            else:
                self.anonymous = self.h.connect()
        self.chat()

    def chat(self) -> None:
        """One envelope each way between alice and bob, delivered at once and acknowledged."""
        self.chats += 1
        for src, dst, to in ((self.alice, self.bob, "bob"), (self.bob, self.alice, "alice")):
            sent = item(to, b"chat %d" % self.chats, mid=b"chat-%011d" % self.chats)
            msg = wire.Send(id=src.next_id(), items=(sent,))
            reply = src.reply(msg, wire.SendReply)
            assert [r.status for r in reply.results] == [wire.STATUS_DELIVERED]
            got = [d for d in delivered(dst.received()) if d.mid == sent.mid]
            assert [(d.sender, d.payload) for d in got] == [(src.proto.session.user, sent.payload)]
            dst.send(wire.Ack(up_to=got[0].seq))
        assert not (self.alice.closed or self.bob.closed)


def test_garbage_messages_get_typed_errors_and_others_keep_chatting() -> None:
    world = World()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(value=message_maps(), as_user=st.booleans())
    def run(value: Any, as_user: bool) -> None:
        world.check(value, as_user)

    globalLogPublisher.addObserver(world.observe)
    try:
        run()
    finally:
        globalLogPublisher.removeObserver(world.observe)
    # The run did exercise what it claims to: rejections, closes and the chat.
    assert world.examples >= MAX_EXAMPLES // 2
    assert world.rejected >= world.examples // 2
    assert world.chats == world.examples
    assert not world.failures
    assert isinstance(world.alice, Client) and not world.alice.closed
