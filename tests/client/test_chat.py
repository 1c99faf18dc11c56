"""The client controller (``ChatClient``) and console against the real relay protocol, in memory.

Each client is the real console + controller + ``WireClientProtocol``; the server is the real
``RelayProtocol`` over a ``MemoryStore`` (``tests/server/harness.py``). They are joined with
``twisted.test.iosim`` pumps, so every byte really crosses the wire codec and nothing touches
a socket or sleeps. Keystores are real files under ``tmp_path`` with cheap KDF parameters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from securechat import wire
from securechat.client import prekeys as prekeys_mod
from securechat.client.chat import ChatClient
from securechat.client.console import ConsoleProtocol, Renderer
from securechat.client.keystore import TEST_KDF, Keystore
from securechat.client.network import LoginFailed, WireClientFactory, WireClientProtocol
from securechat.client.outbox import Outbox, OutboxEntry, plan_batches
from securechat.client.sessions import SessionManager
from securechat.crypto.identity import IdentityKeyPair
from tests.client.conftest import cheap_login_secret
from tests.server.harness import Harness, make_config

PASS = "keystore passphrase"


@pytest.fixture(autouse=True)
def few_one_time_prekeys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prekeys_mod, "ONE_TIME_TARGET", {"ecdh": 3, "dh": 2, "rsa": 1, "hybrid": 2})
    # Key generation runs inline here: the in-memory network is pumped synchronously.
    monkeypatch.setattr(prekeys_mod.PrekeyStore, "run_keygen", staticmethod(defer.maybeDeferred))


class Peer:
    """One user's client: keystore on disk, controller, console, and its current connection."""

    def __init__(
        self,
        net: Net,
        name: str,
        *,
        register: bool = True,
        backend: str | None = None,
        password: str | None = None,
    ) -> None:
        self.net = net
        self.name = name
        self.home = net.tmp_path / name
        if Keystore.exists(self.home):
            keystore = Keystore.open(self.home, PASS)
        else:
            private = IdentityKeyPair.generate().private_bytes()
            keystore = Keystore.create(self.home, PASS, name, private, TEST_KDF)
        self.stopped: list[int] = []
        self.client = ChatClient(
            SessionManager(keystore), password=password or Harness.password(name),
            register=register, backend=backend, clock=lambda: 1000.0, stop=self.stopped.append,
            call_later=net.harness.clock.callLater,
        )  # fmt: skip
        self.console = ConsoleProtocol(self.client, lambda w: Renderer(w, True, lambda: 0.0))
        self.stdout = StringTransport()
        self.console.makeConnection(self.stdout)
        self.client.renderer = self.console.renderer
        self.proto: WireClientProtocol | None = None
        self.pump: iosim.IOPump | None = None
        self._seen = 0

    # -- connection ------------------------------------------------------------------
    def connect(self) -> Peer:
        c = self.client
        factory = WireClientFactory(c.connected, c.push, c.lost)
        server = self.net.harness.factory.buildProtocol(None)
        proto = factory.buildProtocol(None)
        self.proto = proto
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), proto, iosim.makeFakeClient(proto),
            greet=False, clock=self.net.harness.clock,
        )  # fmt: skip
        self.net.pumps.append(self.pump)
        self.net.flush()
        return self

    def drop(self, discard_unsent: bool = False) -> None:
        """The connection breaks; with ``discard_unsent`` our last writes never arrive."""
        assert self.pump is not None
        if discard_unsent:
            self.pump.clientIO.getOutBuffer()
        self.pump.clientIO.loseConnection()
        self.net.flush()
        self.net.pumps.remove(self.pump)
        self.pump = None

    # -- input and output ------------------------------------------------------------
    def type(self, *lines: str) -> None:
        self.console.dataReceived("".join(line + "\n" for line in lines).encode())
        self.net.flush()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(line) for line in self.stdout.value().splitlines()]
        return [e for e in out if kind is None or e["type"] == kind]

    def new_events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Events since the last call (of any kind), filtered by ``kind``."""
        everything = self.events()
        fresh, self._seen = everything[self._seen :], len(everything)
        return [e for e in fresh if kind is None or e["type"] == kind]

    def messages(self) -> list[tuple[str, str | None, str]]:
        return [(e["from"], e.get("room"), e["text"]) for e in self.events("message")]

    def on_disk(self) -> Keystore:
        return Keystore.open(self.home, PASS)


class Net:
    """The in-memory relay and every pump connected to it."""

    def __init__(self, tmp_path: Path, harness: Harness) -> None:
        self.tmp_path = tmp_path
        self.harness = harness
        self.pumps: list[iosim.IOPump] = []

    def peer(self, name: str, **kwargs: Any) -> Peer:
        return Peer(self, name, **kwargs).connect()

    def flush(self) -> None:
        """Pump every connection (and the relay's zero-delay calls) until all is quiet."""
        for _ in range(1000):
            self.harness.clock.advance(0)
            if not any([p.flush() for p in list(self.pumps)]):
                return
        raise AssertionError("the connections never went quiet")


#: RSA keys cost ~0.2 s each to make: only the tests about RSA (or every backend) allow it.
FAST = {"crypto": {"backends": ["ecdh", "dh"]}}


@pytest.fixture
def net(tmp_path: Path) -> Net:
    return Net(tmp_path, Harness(make_config(**FAST)))


@pytest.fixture
def net_all(tmp_path: Path) -> Net:
    return Net(tmp_path, Harness())


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    """Every request any client sends: (user, message type, fields)."""
    log: list[tuple[str, str, dict[str, Any]]] = []
    original = WireClientProtocol.request

    def request(self: WireClientProtocol, cls: Callable[..., Any], **fields: Any) -> Any:
        owner = self._on_push.__self__.user  # type: ignore[attr-defined]
        log.append((owner, cls.__name__, fields))  # type: ignore[attr-defined]
        return original(self, cls, **fields)

    monkeypatch.setattr(WireClientProtocol, "request", request)
    return log


def kinds(log: list[tuple[str, str, dict[str, Any]]], user: str) -> list[str]:
    return [k for u, k, _ in log if u == user]


# -- login ---------------------------------------------------------------------------------


def test_register_login_and_publish(net_all: Net, requests: list[Any]) -> None:
    net = net_all
    alice = net.peer("alice")
    assert alice.client.first_login.called and alice.client.logged_in_once
    [status] = alice.events("status")
    assert (status["state"], status["user"], status["role"]) == ("connected", "alice", "user")
    names = kinds(requests, "alice")
    assert names[:4] == ["Hello", "PowChallenge", "Register", "LoginPassword"]
    # Per allowed backend: signed prekey first, then one batch of one-time prekeys; the
    # relay's "prekeys low" hints during login do not make a second, wasted batch.
    publishes = [f for u, k, f in requests if k == "PublishPrekeys"]
    targets = {"ecdh": 3, "dh": 2, "rsa": 1}
    for backend, target in targets.items():
        mine = [f for f in publishes if f["backend"] == backend]
        assert [(f.get("signed_prekey") is not None, len(f["one_time"])) for f in mine] == [
            (True, 0), (False, target),
        ]  # fmt: skip
        assert net.harness.store.count_one_time_prekeys("alice", backend).result == target
        private = [k for k in alice.client.sessions.state.prekeys if k.startswith(f"otk:{backend}")]
        assert len(private) == target
    assert alice.on_disk().state.extra["registered"] is True

    # The next start logs in without registering or uploading anything new.
    alice.drop()
    again = Peer(net, "alice").connect()
    later = [k for k in kinds(requests, "alice")[len(names) :]]
    assert "Register" not in later and later[:2] == ["Hello", "LoginPassword"]
    republished = [f["signed_prekey"] for u, k, f in requests[-4:] if k == "PublishPrekeys"]
    assert republished == [None] * 3 and requests[-1][1] == "RoomList"  # rooms catch up
    assert again.client.logged_in_once


def test_prekeys_low_is_topped_up_in_one_request(net: Net, requests: list[Any]) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    start = len(requests)
    bob.type("/msg alice takes one of your one-time prekeys")
    assert alice.messages() == [("bob", None, "takes one of your one-time prekeys")]
    [top_up] = [f for u, k, f in requests[start:] if u == "alice" and k == "PublishPrekeys"]
    assert (top_up["backend"], len(top_up["one_time"]), top_up.get("signed_prekey")) == (
        "ecdh", 1, None,
    )  # fmt: skip
    assert net.harness.store.count_one_time_prekeys("alice", "ecdh").result == 3


def test_wrong_password_fails_the_first_login_in_one_line(net: Net) -> None:
    net.peer("alice").drop()
    wrong = Peer(net, "alice", register=False, password="not the password")
    failures: list[Any] = []
    wrong.client.first_login.addErrback(failures.append)
    wrong.connect()
    [failure] = failures
    assert failure.check(LoginFailed)
    assert str(failure.value) == "login refused: wrong user name or password"


def test_backend_not_allowed_by_the_server_fails_login(tmp_path: Path) -> None:
    """Refused before registering: the account is not created under a refused choice."""
    net = Net(tmp_path, Harness(make_config(crypto={"backends": ["ecdh"]})))
    peer = Peer(net, "alice", backend="rsa")
    failures: list[Any] = []
    peer.client.first_login.addErrback(failures.append)
    peer.connect()
    [failure] = failures
    assert "does not allow backend 'rsa' (allowed: ecdh)" in str(failure.value)
    assert "alice" not in net.harness.store._users


# -- chatting ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["dh", "ecdh", "rsa"])
def test_chat_both_ways(net_all: Net, requests: list[Any], backend: str) -> None:
    net = net_all
    alice, bob = net.peer("alice", backend=backend), net.peer("bob", backend=backend)
    alice.type("/msg bob hello bob")
    assert bob.messages() == [("alice", None, "hello bob")]
    [sent] = alice.events("sent")
    assert (sent["to"], sent["status"]) == ("bob", wire.STATUS_DELIVERED)
    [message] = bob.events("message")
    assert message["id"] == sent["id"] and message["verified"] is False
    # The first message fetched bob's bundle for the chosen backend, then sent one item.
    fetch = [f for u, k, f in requests if u == "alice" and k == "FetchBundle"]
    assert fetch == [{"user": "bob", "backend": backend}]
    [send] = [f for u, k, f in requests if u == "alice" and k == "Send"]
    [item] = send["items"]
    assert (item.to, item.backend, item.mid.hex(), item.room) == ("bob", backend, sent["id"], None)
    assert b"hello bob" not in item.payload

    bob.type("/chat alice", "hi alice", "second line")
    assert alice.messages() == [("bob", None, "hi alice"), ("bob", None, "second line")]
    # bob answers on the session alice started: no bundle fetch of his own.
    assert "FetchBundle" not in kinds(requests, "bob")
    assert not alice.client.outbox and not bob.client.outbox


def test_offline_delivery_and_session_kept_across_restart(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob before")
    bob.drop()
    alice.type("/msg bob while you were away")
    assert alice.events("sent")[-1]["status"] == wire.STATUS_QUEUED
    # bob's process restarts: a new controller over the keystore read back from disk.
    bob = Peer(net, "bob").connect()
    assert bob.messages() == [("alice", None, "while you were away")]
    # Shown after "logged in", announced, with the sender's trust (pinned on first use).
    kinds = [e["type"] for e in bob.events()]
    assert kinds.index("status") < kinds.index("message")
    assert "1 message arrived while you were away:" in [e.get("text") for e in bob.events("info")]
    assert bob.events("message")[0]["trust"] == "pinned"
    bob.type("/msg alice back again")
    assert alice.messages() == [("bob", None, "back again")]


def test_commands_send_the_right_requests(net: Net, requests: list[Any]) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    start = len(requests)
    alice.type(
        "/who", "/contacts", "/contact add bob", "/join #ops", "/leave #ops", "/verify bob",
        "/users", "/kick bob",
    )  # fmt: skip
    sent = [(k, f) for u, k, f in requests[start:] if u == "alice"]
    assert sent == [
        ("Who", {}),
        ("ContactList", {}),
        ("ContactRequest", {"user": "bob"}),
        ("RoomSync", {"room": "#ops", "after": 0}),  # no such room: create it
        ("RoomPost", {"room": "#ops", "event": sent[4][1]["event"]}),
        ("RoomPost", {"room": "#ops", "event": sent[5][1]["event"]}),  # leave
        ("FetchBundle", {"user": "bob", "backend": "ecdh"}),
        ("AdminList", {}),
        ("AdminKick", {"user": "bob"}),
    ]
    events = alice.events()
    [who] = [e for e in events if e["type"] == "who"]
    assert who["users"] == ["bob"]  # the others online
    [verify] = [e for e in events if e["type"] == "verify"]
    assert verify["user"] == "bob" and len(verify["safety_number"].replace(" ", "")) == 60
    # A plain user is refused the admin commands, as one error event each.
    refusals = [e for e in events if e["type"] == "error"]
    assert len(refusals) == 2 and all("server refused" in e["text"] for e in refusals)
    # Each says which command it answers, with the server's code.
    assert [(e["command"], e["code"]) for e in refusals] == [
        ("/users", "not-permitted"), ("/kick bob", "not-permitted"),
    ]  # fmt: skip
    assert bob.events("contact")[-1]["state"] == "pending-in"


def test_backend_command_shows_and_switches(net: Net, requests: list[Any]) -> None:
    alice, _ = net.peer("alice"), net.peer("bob")
    alice.type("/backend", "/backend rot13", "/backend dh", "/msg bob over dh")
    info, error, switched = (e for e in alice.events() if e["type"] in ("info", "error"))
    assert (info["backend"], sorted(info["allowed"])) == ("ecdh", ["dh", "ecdh"])
    assert error["type"] == "error" and "rot13" in error["text"]
    assert (error["command"], error["code"]) == ("/backend rot13", "backend-not-allowed")
    assert switched["backend"] == "dh"
    [send] = [f for u, k, f in requests if u == "alice" and k == "Send"]
    assert send["items"][0].backend == "dh"


def test_room_of_three_gets_each_message_once(net: Net) -> None:
    alice, bob, carol = net.peer("alice"), net.peer("bob"), net.peer("carol")
    alice.type("/join #ops", "/invite bob #ops", "/invite carol #ops")
    for p in (bob, carol):
        p.type("/join #ops")
    alice.type("/msg #ops hello room")
    bob.type("/chat #ops", "hi from bob")
    assert bob.messages() == [("alice", "#ops", "hello room")]
    assert carol.messages() == [("alice", "#ops", "hello room"), ("bob", "#ops", "hi from bob")]
    assert alice.messages() == [("bob", "#ops", "hi from bob")]
    # One envelope per other member, one "sent" event naming them all.
    [sent] = alice.events("sent")
    assert (sent["to"], sent["recipients"], sent["status"]) == ("#ops", ["bob", "carol"],
                                                               "delivered")  # fmt: skip


def test_contacts_policy(tmp_path: Path) -> None:
    net = Net(tmp_path, Harness(make_config(policy={"messaging": "contacts"}, **FAST)))
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob not yet")
    assert bob.messages() == []
    [error] = alice.events("error")
    assert "refused" in error["text"] and error["command"] == "/msg bob" and error["code"]
    alice.type("/contact add bob")
    bob.type("/contact accept alice")
    assert alice.events("contact")[-1]["state"] == "accepted"
    alice.type("/msg bob now we are contacts")
    assert bob.messages() == [("alice", None, "now we are contacts")]


# -- reliability: outbox, acknowledgements, duplicates -------------------------------------


def test_outbox_is_saved_before_sending_and_resent_with_the_same_id(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob first")
    assert alice.pump is not None
    # Typed while the connection is about to break: encrypted, saved, written...
    alice.client.send_text("bob", "survives a broken connection")
    [entry] = Outbox(alice.on_disk().state.extra)
    assert entry.to == "bob"
    # ...but the bytes never reach the server.
    alice.drop(discard_unsent=True)
    assert bob.messages() == [("alice", None, "first")]
    assert [e.mid for e in alice.client.outbox] == [entry.mid]
    [status] = alice.events("status")[-1:]
    assert status["state"] == "disconnected"

    alice.connect()  # ClientService would reconnect; the entry goes out again unchanged
    assert bob.messages()[-1] == ("alice", None, "survives a broken connection")
    assert bob.events("message")[-1]["id"] == entry.mid.hex()
    assert alice.events("sent")[-1]["id"] == entry.mid.hex()
    assert not Outbox(alice.on_disk().state.extra)


def test_outbox_is_resent_by_the_next_process(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob first")
    alice.client.send_text("bob", "sent by a process that then died")
    [mid] = [e.mid for e in alice.client.outbox]
    alice.drop(discard_unsent=True)
    restarted = Peer(net, "alice").connect()
    assert bob.events("message")[-1]["id"] == mid.hex()
    assert bob.messages()[-1][2] == "sent by a process that then died"
    assert not restarted.client.outbox


def test_delivery_is_acknowledged_only_after_it_is_saved(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    delivered: dict[int, bytes] = {}  # seq -> message id, as the relay pushed them
    acked: list[int] = []
    assert bob.proto is not None
    original_push, original_send = bob.proto._on_push, bob.proto.send

    def push(msg: wire.Message) -> None:
        if isinstance(msg, wire.Deliver):
            delivered.update((i.seq, i.mid) for i in msg.items)
        original_push(msg)

    def send(msg: wire.Message) -> None:
        if isinstance(msg, wire.Ack):
            # When the ack leaves, the keystore on disk already records every message it
            # covers (and the session that decrypted it): a crash now loses nothing.
            seen = set(bob.on_disk().state.seen["alice"])
            assert {m for q, m in delivered.items() if q <= msg.up_to} <= seen
            acked.append(msg.up_to)
        original_send(msg)

    bob.proto._on_push = push  # type: ignore[method-assign]
    bob.proto.send = send  # type: ignore[method-assign]
    alice.type("/msg bob one", "/msg bob two")
    assert bob.messages() == [("alice", None, "one"), ("alice", None, "two")]
    assert len(delivered) == 2 and acked and max(acked) == max(delivered)


def test_redelivery_after_a_lost_ack_is_not_shown_twice(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    assert bob.proto is not None
    bob.proto.send = lambda msg: None  # type: ignore[method-assign]  # acks are lost
    alice.type("/msg bob only once")
    assert bob.messages() == [("alice", None, "only once")]
    bob.drop()
    bob.connect()  # the relay delivers the unacknowledged envelope again
    bob.drop()
    bob = Peer(net, "bob").connect()  # and again to a restarted process
    assert bob.messages() == []
    alice.type("/msg bob next")
    assert bob.messages() == [("alice", None, "next")]


def test_quit_waits_for_pending_sends(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    assert alice.pump is not None
    alice.console.dataReceived(b"/msg bob last words\n")
    alice.console.readConnectionLost()  # end of stdin
    assert alice.stopped == []  # the send is not accepted yet
    net.flush()
    assert alice.stopped == [0]
    assert bob.messages() == [("alice", None, "last words")]


def test_sending_to_a_verified_peer_with_a_changed_key_is_blocked(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob hi")
    alice.type("/verify bob", "/trust bob")
    assert alice.events("info")[-1]["verified"] is True
    # The relay now hands out other keys for bob (a malicious relay, or bob re-installed).
    impostor = SessionManager(
        Keystore.create(net.tmp_path / "impostor", PASS, "bob",
                        IdentityKeyPair.generate().private_bytes(), TEST_KDF)
    )  # fmt: skip
    signed, one_time = impostor.prekeys.to_publish("ecdh", 0)
    store = net.harness.store
    assert store.set_identity_key("bob", impostor.identity.public_bytes()).called
    alice.client.sessions.state.sessions.clear()  # force a fresh bundle fetch
    store_publish(store, "bob", signed, one_time)
    alice.type("/msg bob are you still bob?")
    errors = alice.events("error")
    assert "verified identity key changed" in errors[-1]["text"]
    assert (errors[-1]["command"], errors[-1]["code"]) == ("/msg bob", "blocked")
    warnings = alice.events("warning")
    assert "identity key of bob has changed" in warnings[-1]["text"]
    assert bob.messages() == [("alice", None, "hi")]
    # Even a new attempt stays blocked until /trust.
    alice.type("/msg bob again?")
    assert "verified identity key changed" in alice.events("error")[-1]["text"]
    alice.type("/trust bob")  # never shown: refused
    assert "not the one last shown" in alice.events("error")[-1]["text"]
    assert alice.events("error")[-1]["command"] == "/trust bob"
    alice.type("/verify bob", "/trust bob", "/msg bob now trusted")
    assert alice.events("sent")[-1]["peer"] == "bob"


def store_publish(store: Any, user: str, signed: bytes | None, one_time: list[Any]) -> None:
    """Replace ``user``'s ecdh prekeys in the MemoryStore (what a lying relay would serve)."""
    assert signed is not None
    store._keys.pop((user, "ecdh"), None)
    d = store.publish_prekeys(user, "ecdh", signed, list(one_time))
    assert d.called


def test_commands_act_in_the_order_they_were_typed(net: Net) -> None:
    """``/verify`` and ``/trust`` right after the first ``/msg`` act on the key it pinned."""
    alice, net_bob = net.peer("alice"), net.peer("bob")
    assert net_bob.events("status")
    alice.console.dataReceived(b"/msg bob first contact\n/verify bob\n/trust bob\n/backend\n")
    net.flush()
    assert alice.new_events("error") == []
    infos = [e for e in alice.events("info") if e.get("verified")]
    assert infos and infos[0]["user"] == "bob"
    assert alice.client.sessions.is_verified("bob")


def test_end_of_input_waits_for_the_replies_of_earlier_commands(net: Net) -> None:
    """``printf '/who\\n' | securechat-client`` prints the answer before it exits."""
    alice, _ = net.peer("alice"), net.peer("bob")
    alice.console.dataReceived(b"/who\n")
    alice.console.readConnectionLost()
    assert alice.stopped == []  # the reply has not arrived yet
    net.flush()
    assert [e["users"] for e in alice.events("who")] == [["bob"]]
    assert alice.stopped == [0]


def test_send_is_retried_after_the_store_was_unavailable(net: Net) -> None:
    """An ``unavailable`` reply leaves the message in the outbox; it goes again later, once."""
    from twisted.internet import defer

    from securechat.errors import StoreError

    alice, bob = net.peer("alice"), net.peer("bob")
    store = net.harness.store
    real_enqueue = store.enqueue
    failures = [StoreError("database is locked")]

    def flaky(envelopes: Any) -> Any:
        if failures:
            return defer.fail(failures.pop())
        return real_enqueue(envelopes)

    store.enqueue = flaky  # type: ignore[method-assign]
    alice.type("/msg bob are you there")
    assert [e["code"] for e in alice.new_events("warning")] == [wire.E_UNAVAILABLE]
    assert bob.messages() == []
    assert len(alice.client.outbox) == 1
    net.harness.clock.advance(5)
    net.flush()
    assert bob.messages() == [("alice", None, "are you there")]
    assert not alice.client.outbox
    assert [e["status"] for e in alice.events("sent")] == ["delivered"]


def test_register_takes_over_an_account_the_admin_created(net: Net) -> None:
    """``securechat-admin user add carol`` then ``securechat-client --register``: the client
    logs in with the password, publishes its identity key, and can be messaged."""
    # Password set by securechat-admin (which stores the hash of the derived login secret,
    # as the client sends it), no identity key yet.
    net.harness.add_user("carol", password=cheap_login_secret("carol", Harness.password("carol")))
    carol, bob = net.peer("carol"), net.peer("bob")
    assert carol.client.logged_in_once
    assert [e for e in carol.events("info") if "exists" in e["text"]]
    record = net.harness.store.get_user("carol").result
    assert record.identity_key == carol.client.sessions.identity.public_bytes()
    assert carol.on_disk().state.extra["registered"] is True
    bob.type("/msg carol welcome aboard")
    assert carol.messages() == [("bob", None, "welcome aboard")]


def test_register_with_a_taken_name_and_wrong_password_fails(net: Net) -> None:
    net.harness.add_user("alice")  # someone else's account, created by the admin
    intruder = Peer(net, "alice", password="not alices password at all")
    failures: list[Any] = []
    intruder.client.first_login.addErrback(failures.append)
    intruder.connect()
    [failure] = failures
    assert failure.check(LoginFailed)
    assert not intruder.on_disk().state.extra.get("registered")


def test_send_batches_stay_under_the_servers_frame_limit(net: Net) -> None:
    alice = net.peer("alice")
    welcome = alice.client.welcome
    assert welcome is not None
    entries = [OutboxEntry(mid=bytes([i]) * 16, to="bob", backend="ecdh", payload=b"x" * 33_000)
               for i in range(40)]  # fmt: skip
    batches = plan_batches(entries, welcome.max_batch, welcome.max_frame_bytes)
    assert sum(len(b) for b in batches) == 40 and len(batches) >= 2
    for batch in batches:
        assert sum(len(e.payload or b"") + 128 for e in batch) < welcome.max_frame_bytes


def test_room_updates_for_an_unknown_room_do_not_invent_its_members(net: Net) -> None:
    alice = net.peer("alice")
    alice.client.push(wire.RoomUpdate(room="#ops", user="bob", joined=True))
    assert alice.client.room_book.roster("#ops") is None  # only signed events admit


def test_admins_add_and_remove_users_from_the_client(net: Net) -> None:
    """``/user add NAME [admin]`` makes an account with a one-time password shown only to
    the admin (the new user logs in with it); ``/user remove`` deletes it and closes its
    session; plain users are refused and nothing changes."""
    net.harness.add_user("root", role="admin",
                         password=cheap_login_secret("root", Harness.password("root")))  # fmt: skip
    root = net.peer("root")
    root.new_events()
    root.type("/user add dave", "/user add erin admin")
    added = [e for e in root.new_events("info") if "one-time password" in e["text"]]
    assert [e["user"] for e in added] == ["dave", "erin"]
    password = added[0]["password"]
    assert len(password) >= 24 and password != added[1]["password"]
    store = net.harness.store
    assert store.get_user("dave").result.role == "user"
    assert store.get_user("erin").result.role == "admin"
    dave = net.peer("dave", password=password)  # --register takes the account over
    assert dave.client.logged_in_once and "dave" in net.harness.relay.sessions

    root.type("/user remove dave")
    assert any(e["text"] == "removed dave" for e in root.new_events("info"))
    assert store.get_user("dave").result is None
    assert "dave" not in net.harness.relay.sessions

    root.type("/user add erin", "/user remove nobody", "/user add Bad!Name", "/user add x y",
              "/user frobnicate x")  # fmt: skip
    errors = [e["text"] for e in root.new_events("error")]
    assert len(errors) == 5 and sum("usage: /user" in t or "bad command" in t for t in errors) == 2

    bob = net.peer("bob")
    bob.new_events()
    bob.type("/user add mallory", "/user remove erin")
    assert len(bob.new_events("error")) == 2
    assert store.get_user("mallory").result is None and store.get_user("erin").result


def test_history_of_both_directions_and_rooms_survives_a_restart(net: Net) -> None:
    alice, bob = net.peer("alice"), net.peer("bob")
    alice.type("/msg bob one", "/msg bob two")
    bob.type("/msg alice three")
    alice.type("/history bob", "/history bob 2", "/history nobody")
    full, last2, empty = alice.events("history")
    assert full["with"] == "bob" and full["kept"] == 3
    assert [(m["direction"], m["from"], m["text"]) for m in full["messages"]] == [
        ("out", "alice", "one"), ("out", "alice", "two"), ("in", "bob", "three"),
    ]  # fmt: skip
    assert full["messages"][2]["id"] == bob.events("sent")[0]["id"]
    assert [m["text"] for m in last2["messages"]] == ["two", "three"]
    assert (empty["messages"], empty["kept"]) == ([], 0)
    for p in (alice, bob):
        p.type("/join #ops")
    bob.type("/msg #ops to the room")
    bob.drop()
    bob = Peer(net, "bob").connect()  # a new process over the saved keystore
    bob.type("/history alice 1", "/history #ops")
    to_alice, room = bob.events("history")
    assert [m["text"] for m in to_alice["messages"]] == ["three"]
    assert [(m["from"], m["text"]) for m in room["messages"]] == [("bob", "to the room")]
    assert [m["text"] for m in alice.events("history")[0]["messages"]][-1] == "three"
