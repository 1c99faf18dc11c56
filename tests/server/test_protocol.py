"""The per-connection protocol: handshake, login methods, bad input, timeouts, backpressure.

Every bad-input test also checks that another logged-in user is unaffected.
"""

from __future__ import annotations

import struct

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent

from securechat import wire
from securechat.server.connection import TLSConnectionInfo
from tests.server.harness import EXPORTER, Client, Harness, delivered, item, make_config


def _healthy(h: Harness, a: Client, b: Client) -> None:
    """``a`` can still send to ``b`` and ``b`` receives it."""
    reply = a.reply(wire.Send(id=a.next_id(), items=(item("bob", b"still fine"),)),
                    wire.SendReply)  # fmt: skip
    assert reply.results[0].status == wire.STATUS_DELIVERED
    h.clock.advance(0)
    assert [i.payload for i in delivered(b.received())] == [b"still fine"]


def _pair(h: Harness) -> tuple[Client, Client]:
    return h.online("alice"), h.online("bob")


def test_hello_returns_policy() -> None:
    """hello is answered with the server's limits and policy, before login."""
    h = Harness(make_config(policy={"messaging": "contacts"}, auth={"registration_pow_bits": 4}))
    c = h.connect()
    w = c.reply(wire.Hello(id=1, version=wire.PROTOCOL_VERSION), wire.Welcome)
    assert w.backends == ("ecdh", "dh", "rsa", "hybrid") and w.default_backend == "ecdh"
    assert (w.messaging, w.pow_bits, w.registration) == ("contacts", 4, True)
    assert w.max_frame_bytes == h.config.server.max_frame_bytes
    assert w.server.startswith("securechat/")


def test_hello_with_other_version_is_refused() -> None:
    """A client speaking another protocol version gets a typed error."""
    c = Harness().connect()
    assert c.error(wire.Hello(id=1, version=99)).code == wire.E_UNSUPPORTED_VERSION


def test_ping_before_login() -> None:
    """ping works before login."""
    assert Harness().connect().reply(wire.Ping(id=5), wire.Pong).id == 5


def test_garbage_bytes_disconnect_only_that_connection() -> None:
    """Undecodable CBOR gets a bad-frame error and a disconnect; others carry on."""
    h = Harness()
    a, b = _pair(h)
    evil = h.online("mallory")
    evil.send_raw(struct.pack(">I", 3) + b"\xff\xfe\xfd")
    msgs = evil.received()
    assert isinstance(msgs[0], wire.Error) and msgs[0].code == wire.E_BAD_FRAME
    assert isinstance(msgs[1], wire.Bye)
    assert evil.closed
    _healthy(h, a, b)


def test_oversize_frame_disconnects() -> None:
    """A length prefix above max_frame_bytes closes the connection without reading it."""
    h = Harness()
    a, b = _pair(h)
    evil = h.online("mallory")
    evil.send_raw(struct.pack(">I", h.config.server.max_frame_bytes + 1) + b"x" * 100)
    assert [m.code for m in evil.received() if isinstance(m, wire.Error)] == [wire.E_TOO_LARGE]
    assert evil.closed
    _healthy(h, a, b)


def test_input_after_close_is_dropped_not_buffered() -> None:
    """Neither an oversize frame nor anything sent after a close is kept in memory."""
    h = Harness()
    evil = h.connect()
    evil.send_raw(struct.pack(">I", h.config.server.max_frame_bytes + 1) + b"x" * 100)
    assert evil.proto._closing and evil.proto._unprocessed == b""
    for _ in range(50):
        evil.send_raw(b"y" * 65536)
    assert evil.proto._unprocessed == b""

    polite = h.online("alice")
    polite.proto.close(wire.E_KICKED, "bye")
    polite.send_raw(struct.pack(">I", 1000) + b"z" * 10)  # a partial frame
    polite.send_raw(wire.encode_frame(wire.Ping(id=5)))
    assert polite.proto._unprocessed == b""
    assert not any(isinstance(m, wire.Pong) for m in polite.received())


def test_unknown_type_and_wrong_types_keep_connection() -> None:
    """Unknown types and ill-typed fields get typed errors with the request id."""
    h = Harness()
    a, b = _pair(h)
    a.send_raw(wire.encode_frame(wire.Ping(id=1))[:0] + _frame({"type": "fly", "id": 7}))
    a.send_raw(_frame({"type": "who", "id": 8, "extra": True}))
    a.send_raw(_frame({"type": "send", "id": 9, "items": "not a list"}))
    a.send_raw(_frame(["not", "a", "map"]))
    a.send(wire.Deliver(items=()))  # a push type is not a request
    errors = [(m.id, m.code) for m in a.received() if isinstance(m, wire.Error)]
    assert errors == [
        (7, wire.E_UNKNOWN_TYPE), (8, wire.E_BAD_REQUEST), (9, wire.E_BAD_REQUEST),
        (None, wire.E_NOT_A_MAP), (None, wire.E_UNKNOWN_TYPE),
    ]  # fmt: skip
    assert not a.closed
    _healthy(h, a, b)


def _frame(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return struct.pack(">I", len(body)) + body


def test_commands_before_login_are_refused() -> None:
    """Everything but hello, ping, registration and login needs a login first."""
    h = Harness()
    a, b = _pair(h)
    c = h.connect()
    for msg in (wire.Who(id=1), wire.Send(id=2, items=(item("bob"),)), wire.AdminList(id=3)):
        assert c.error(msg).code == wire.E_NOT_AUTHENTICATED
    c.send(wire.Ack(up_to=5))
    assert [m.code for m in c.received() if isinstance(m, wire.Error)] == [wire.E_NOT_AUTHENTICATED]
    assert h.store._queues.get("bob") is None
    _healthy(h, a, b)


def test_password_login_failure_and_throttle() -> None:
    """Wrong passwords are auth-failed; after the burst, throttled with a retry hint."""
    h = Harness()
    h.add_user("alice")
    c = h.connect()
    codes = []
    for _ in range(h.config.auth.pair_burst + 1):
        e = c.error(wire.LoginPassword(id=c.next_id(), user="alice", password="wrong-password"))
        codes.append((e.code, e.retry_after is not None))
    assert codes[:-1] == [(wire.E_AUTH_FAILED, False)] * h.config.auth.pair_burst
    assert codes[-1] == (wire.E_THROTTLED, True)
    h.clock.advance(120)  # the pair bucket refills (its debt too); the deadline passed
    assert c.closed
    assert h.connect().login("alice").user == "alice"


def test_change_password_needs_a_login_and_the_old_password() -> None:
    """The old password is checked as a login is; the new one must pass the registration
    rules; afterwards only the new one logs in."""
    h = Harness()
    c = h.connect()
    refused = c.error(wire.ChangePassword(id=1, old="x", new="new-secret-1"))
    assert refused.code == wire.E_NOT_AUTHENTICATED
    a = h.online("alice")
    old = h.password("alice")
    wrong = a.error(wire.ChangePassword(id=a.next_id(), old="wrong-password", new="new-secret-1"))
    assert wrong.code == wire.E_AUTH_FAILED
    weak = a.error(wire.ChangePassword(id=a.next_id(), old=old, new="short"))
    assert weak.code == "weak-password"
    a.reply(wire.ChangePassword(id=a.next_id(), old=old, new="new-secret-1"), wire.Ok)
    b = h.connect()
    assert b.error(wire.LoginPassword(id=1, user="alice", password=old)).code == (
        wire.E_AUTH_FAILED
    )
    assert h.connect().login("alice", "new-secret-1").user == "alice"


def test_second_login_on_same_connection_is_refused() -> None:
    """A logged-in connection cannot log in again."""
    h = Harness()
    a = h.online("alice")
    assert a.error(wire.LoginPassword(id=1, user="alice", password="x")).code == (
        wire.E_ALREADY_AUTHENTICATED
    )


def _key_pair() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_publickey_login_and_replayed_nonce() -> None:
    """A signature over (user, nonce, exporter) logs in; the nonce cannot be used twice."""
    h = Harness()
    key, public = _key_pair()
    h.add_user("alice", identity_key=public)
    c = h.connect()
    nonce = c.reply(wire.LoginChallenge(id=1), wire.LoginNonce).nonce
    sig = key.sign(wire.login_signature_payload("alice", nonce, EXPORTER))
    bad = c.error(wire.LoginPublicKey(id=2, user="alice", nonce=nonce, signature=b"\0" * 64))
    assert bad.code == wire.E_AUTH_FAILED
    replay = c.error(wire.LoginPublicKey(id=3, user="alice", nonce=nonce, signature=sig))
    assert replay.code == wire.E_AUTH_FAILED
    nonce = c.reply(wire.LoginChallenge(id=4), wire.LoginNonce).nonce
    sig = key.sign(wire.login_signature_payload("alice", nonce, EXPORTER))
    ok = c.reply(wire.LoginPublicKey(id=5, user="alice", nonce=nonce, signature=sig),
                 wire.LoggedIn)  # fmt: skip
    assert ok.user == "alice"


def test_publickey_login_without_challenge_is_refused() -> None:
    """A nonce the server never issued on this connection is refused."""
    h = Harness()
    key, public = _key_pair()
    h.add_user("alice", identity_key=public)
    c = h.connect()
    nonce = b"\x01" * 32
    sig = key.sign(wire.login_signature_payload("alice", nonce, EXPORTER))
    assert c.error(wire.LoginPublicKey(id=1, user="alice", nonce=nonce, signature=sig)).code == (
        wire.E_AUTH_FAILED
    )


def test_certificate_login() -> None:
    """The verified client certificate's CN is the user; no certificate, no login."""
    h = Harness()
    h.add_user("carol", role="admin")
    assert h.connect(cn=None).error(wire.LoginCertificate(id=1)).code == wire.E_AUTH_FAILED
    ok = h.connect(cn="carol").reply(wire.LoginCertificate(id=2), wire.LoggedIn)
    assert (ok.user, ok.role) == ("carol", "admin")


def test_disabled_method_is_refused() -> None:
    """A login method missing from [auth] methods is method-not-allowed."""
    h = Harness(make_config(auth={"methods": ["publickey"]}))
    h.add_user("alice")
    c = h.connect()
    e = c.error(wire.LoginPassword(id=1, user="alice", password=h.password("alice")))
    assert e.code == wire.E_METHOD_NOT_ALLOWED


def test_register_with_proof_of_work_then_login() -> None:
    """Registration checks the connection's challenge; the new user can log in."""
    h = Harness(make_config(auth={"registration_pow_bits": 6}))
    c = h.connect()
    pw = "a fine passphrase"
    e = c.error(wire.Register(id=1, user="dave", password=pw))
    assert e.code == "bad-proof-of-work"
    ch = c.reply(wire.PowChallenge(id=2), wire.PowChallengeReply)
    solution = wire.pow_solve(ch.challenge, "dave", ch.bits)
    reg = wire.Register(id=3, user="dave", password=pw, pow_challenge=ch.challenge,
                        pow_solution=solution)  # fmt: skip
    assert c.reply(reg, wire.Registered).user == "dave"
    again = wire.Register(id=4, user="dave2", password=pw, pow_challenge=ch.challenge,
                          pow_solution=wire.pow_solve(ch.challenge, "dave2", ch.bits))  # fmt: skip
    assert c.error(again).code == "bad-proof-of-work"  # the challenge was single-use
    assert c.login("dave", pw).user == "dave"


def test_registration_closed() -> None:
    """With registration off, register gets registration-closed."""
    c = Harness(make_config(auth={"registration": False})).connect()
    e = c.error(wire.Register(id=1, user="dave", password="a fine passphrase"))
    assert e.code == "registration-closed"


def test_handshake_timeout() -> None:
    """A connection that does not log in within handshake_timeout is closed."""
    h = Harness()
    a, b = _pair(h)
    idle = h.connect()
    h.clock.advance(h.config.server.handshake_timeout - 0.5)
    assert not idle.closed
    h.clock.advance(1)
    msgs = idle.received()
    assert isinstance(msgs[-1], wire.Bye) and msgs[-1].code == wire.E_HANDSHAKE_TIMEOUT
    assert idle.closed
    _healthy(h, a, b)


def test_idle_timeout_and_close_grace() -> None:
    """Input keeps a session alive; silence for idle_timeout closes it, and a close that
    does not finish is aborted."""
    h = Harness(make_config(server={"idle_timeout": 100.0}))
    a, b = _pair(h)
    h.clock.advance(60)
    b.reply(wire.Ping(id=1), wire.Pong)
    h.clock.advance(41)
    assert a.transport.disconnecting and not b.transport.disconnecting
    assert [m.code for m in a.received() if isinstance(m, wire.Bye)] == [wire.E_IDLE_TIMEOUT]
    assert not a.transport.disconnected
    h.clock.advance(60)
    assert a.transport.disconnected  # aborted after the grace period
    assert b.transport.disconnecting  # b's own idle limit has passed by now


def test_slow_reader_is_dropped_and_loses_nothing() -> None:
    """A reader whose transport stays paused past max_outbound_bytes is disconnected;
    its envelopes stay stored and arrive after it reconnects."""
    h = Harness(make_config(server={"max_outbound_bytes": 20_000}))
    a, b = _pair(h)
    carol = h.online("carol")
    b.proto.pauseProducing()
    n = 0
    while not b.transport.disconnected:
        n += 1
        a.reply(wire.Send(id=a.next_id(), items=(item("bob", b"%05d" % n + b"x" * 995),)),
                wire.SendReply)  # fmt: skip
        h.clock.advance(0)
        assert n < 100
    b.received()
    b.drop()
    reply = a.reply(wire.Send(id=a.next_id(), items=(item("carol", b"hi"),)), wire.SendReply)
    assert reply.results[0].status == wire.STATUS_DELIVERED
    assert [i.payload for i in delivered(carol.received())] == [b"hi"]
    b2 = h.connect()
    b2.login("bob")
    h.clock.advance(0)
    payloads = [i.payload[:5] for i in delivered(b2.received())]
    assert payloads == [b"%05d" % k for k in range(1, n + 1)]


def test_paused_output_is_held_then_flushed() -> None:
    """While the transport is paused, pushes wait; resuming sends them in order."""
    h = Harness()
    a, b = _pair(h)
    b.proto.pauseProducing()
    for p in (b"one", b"two"):
        a.reply(wire.Send(id=a.next_id(), items=(item("bob", p),)), wire.SendReply)
    h.clock.advance(0)
    assert b.received() == []
    b.proto.resumeProducing()
    assert [i.payload for i in delivered(b.received())] == [b"one", b"two"]


def test_logs_never_contain_secrets_or_payloads() -> None:
    """Login, send and bad input log lines carry no password, payload or key."""
    h = Harness()
    h.add_user("alice")
    h.add_user("bob")
    with capturedLogs() as events:
        a = h.connect()
        a.error(wire.LoginPassword(id=1, user="alice", password="hunter2-secret"))
        a.login("alice")
        a.reply(wire.Send(id=2, items=(item("bob", b"TOP-SECRET-PAYLOAD"),)), wire.SendReply)
        a.send_raw(_frame({"type": "login_password", "id": 3, "user": 5,
                           "password": "hunter2-secret"}))  # fmt: skip
        a.drop()
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "logged in" in text
    for secret in ("hunter2", "TOP-SECRET", h.password("alice")):
        assert secret not in text


def test_tls_connection_info_reads_the_handle() -> None:
    """TLSConnectionInfo asks the pyOpenSSL connection for the exporter and the CN."""

    class Cert:
        class subject:
            @staticmethod
            def get_attributes_for_oid(oid: object) -> list[object]:
                return [type("A", (), {"value": "carol"})()]

    class Handle:
        def export_keying_material(self, label: bytes, n: int, ctx: None) -> bytes:
            return label[:n]

        def get_peer_certificate(self, as_cryptography: bool) -> object:
            return Cert()

    class TLSTransport(StringTransport):
        def getHandle(self) -> Handle:
            return Handle()

    info = TLSConnectionInfo(TLSTransport())
    assert info.exporter() == wire.EXPORTER_LABEL[: wire.EXPORTER_LENGTH]
    assert info.peer_cn() == "carol"
