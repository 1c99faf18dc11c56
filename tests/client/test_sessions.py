"""SessionManager between two keystores: envelopes, trust (TOFU), duplicates, gaps, restarts.

No network: the "relay" here is a test that hands one manager's published prekeys and
envelopes to the other, with the routing fields a real relay would send alongside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from securechat.client import prekeys as prekeys_mod
from securechat.client.keystore import TEST_KDF, Keystore
from securechat.client.sessions import Received, SessionManager, TrustError
from securechat.crypto.envelope import backend_id
from securechat.crypto.errors import CryptoError
from securechat.crypto.identity import IdentityKeyPair, fingerprint

PASS = "test passphrase"
BACKENDS = ("dh", "ecdh", "rsa", "hybrid")


@pytest.fixture(autouse=True)
def few_one_time_prekeys(monkeypatch: pytest.MonkeyPatch) -> None:
    """RSA keys cost ~0.2 s each: publish one or two one-time prekeys, not dozens."""
    monkeypatch.setattr(prekeys_mod, "ONE_TIME_TARGET", {"ecdh": 2, "dh": 2, "rsa": 1, "hybrid": 2})


@dataclass
class Bundle:
    """What the relay's key directory would hand out for one user and backend."""

    identity_key: bytes
    signed_prekey: bytes
    one_time: bytes | None


def manager(tmp_path: Path, user: str, home: str | None = None) -> SessionManager:
    ks = Keystore.create(
        tmp_path / (home or user), PASS, user, IdentityKeyPair.generate().private_bytes(), TEST_KDF
    )
    return SessionManager(ks)


def reopen(m: SessionManager) -> SessionManager:
    m.keystore.save()
    return SessionManager(Keystore.open(m.keystore.path.parent, PASS))


def publish(m: SessionManager, backend: str, with_one_time: bool = True) -> Bundle:
    signed, one_time = m.prekeys.to_publish(backend, 0)
    if signed is None:  # published before: the relay still has the same signed prekey
        current = m.prekeys.current_signed(backend_id(m.prekeys.local_kem(backend)))
        assert current is not None
        signed = current.to_bytes()
    return Bundle(m.identity.public_bytes(), signed, one_time[0][1] if with_one_time else None)


def start(a: SessionManager, peer: str, bundle: Bundle) -> str | None:
    _, warning = a.start_session(peer, bundle.identity_key, bundle.signed_prekey, bundle.one_time)
    return warning


@dataclass
class Wire:
    """One envelope plus the routing fields the relay sends with it."""

    sender: str
    backend: str
    mid: bytes
    room: str | None
    payload: bytes


def send(a: SessionManager, peer: str, backend: str, text: str, room: str | None = None) -> Wire:
    a.check_can_send(peer)
    session = a.active_session(peer, backend)
    assert session is not None, f"{a.user} has no {backend} session with {peer}"
    mid, payload = a.encrypt(session, text, room)
    return Wire(a.user, backend, mid, room, payload)


def receive(b: SessionManager, w: Wire) -> tuple[Received | None, list[str]]:
    return b.decrypt(w.sender, w.backend, w.mid, w.room, w.payload)


def got(b: SessionManager, w: Wire) -> Received:
    received, warnings = receive(b, w)
    assert warnings == []
    assert received is not None
    return received


@pytest.mark.parametrize("backend", BACKENDS)
def test_chat_both_ways_and_after_restart(tmp_path: Path, backend: str) -> None:
    """Handshake, replies, TOFU pins on both sides, then both keystores reopened."""
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    assert start(alice, "bob", publish(bob, backend)) is None
    one_time_before = sorted(k for k in bob.state.prekeys if k.startswith("otk:"))

    first = got(bob, send(alice, "bob", backend, "hello bob", room=None))
    assert (first.sender, first.text, first.room, first.verified, first.missing) == (
        "alice", "hello bob", None, False, 0,
    )  # fmt: skip
    # First contact pinned each side's identity key, and the one-time prekey is used up.
    assert bob.state.pins["alice"].identity_key == alice.identity.public_bytes()
    assert alice.state.pins["bob"].identity_key == bob.identity.public_bytes()
    one_time_after = sorted(k for k in bob.state.prekeys if k.startswith("otk:"))
    assert one_time_after == one_time_before[1:]

    assert got(alice, send(bob, "alice", backend, "hi alice")).text == "hi alice"
    assert got(bob, send(alice, "bob", backend, "how are you?")).text == "how are you?"

    # Sessions, pins and seen ids survive the keystore being written and read back.
    alice, bob = reopen(alice), reopen(bob)
    assert got(bob, send(alice, "bob", backend, "after restart")).text == "after restart"
    assert got(alice, send(bob, "alice", backend, "still here")).text == "still here"
    assert got(alice, send(bob, "alice", backend, "twice")).text == "twice"


def test_room_field_is_authenticated_and_returned(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh", with_one_time=False))
    assert got(bob, send(alice, "bob", "ecdh", "to the room", room="#ops")).room == "#ops"


def test_duplicate_envelope_is_dropped(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    handshake = send(alice, "bob", "ecdh", "one")
    later = send(alice, "bob", "ecdh", "two")
    assert got(bob, handshake).text == "one"
    assert receive(bob, handshake) == (None, [])
    assert got(bob, later).text == "two"
    assert receive(bob, later) == (None, [])
    # A replay after a restart is still recognised.
    bob = reopen(bob)
    assert receive(bob, later) == (None, [])
    assert receive(bob, handshake) == (None, [])


@pytest.mark.parametrize(
    "field, value",
    [("sender", "mallory"), ("mid", b"\x00" * 16), ("room", "#other"), ("backend", "dh")],
)
def test_routing_fields_must_match_the_envelope(tmp_path: Path, field: str, value: object) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    w = send(alice, "bob", "ecdh", "routed")
    setattr(w, field, value)
    with pytest.raises(CryptoError, match="routing fields disagree"):
        receive(bob, w)
    assert "alice" not in bob.state.pins  # nothing was accepted from it


def test_envelope_for_someone_else_is_refused(tmp_path: Path) -> None:
    alice, bob, carol = (manager(tmp_path, n) for n in ("alice", "bob", "carol"))
    start(alice, "bob", publish(bob, "ecdh"))
    with pytest.raises(CryptoError, match="routing fields disagree"):
        receive(carol, send(alice, "bob", "ecdh", "not for carol"))


def test_gap_is_reported_then_late_message_still_shown(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    w1, w2, w3, w4 = (send(alice, "bob", "ecdh", f"m{i}") for i in range(1, 5))
    assert got(bob, w1).missing == 0
    third = got(bob, w3)
    assert (third.text, third.missing) == ("m3", 1)
    # The skipped one arrives late: shown once, and not counted as another gap.
    late = got(bob, w2)
    assert (late.text, late.missing) == ("m2", 0)
    assert got(bob, w4).missing == 0
    # A gap across a ratchet turn: bob replies, alice's next chain starts.
    got(alice, send(bob, "alice", "ecdh", "reply"))
    send(alice, "bob", "ecdh", "lost in transit")
    after_turn = got(bob, send(alice, "bob", "ecdh", "after the turn"))
    assert (after_turn.text, after_turn.missing) == ("after the turn", 1)


def test_key_change_of_an_unverified_peer_is_a_warning(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    old_key = bob.identity.public_bytes()
    start(alice, "bob", publish(bob, "ecdh"))
    # bob's keys are replaced (new device, or a relay lying about them).
    new_bob = manager(tmp_path, "bob", home="bob-new")
    warning = start(alice, "bob", publish(new_bob, "ecdh"))
    assert warning == "the identity key of bob has changed"
    pin = alice.state.pins["bob"]
    assert (pin.identity_key, pin.changed_from, pin.verified) == (
        new_bob.identity.public_bytes(), old_key, False,
    )  # fmt: skip
    # Not verified before, so sending goes on (to the new session).
    assert got(new_bob, send(alice, "bob", "ecdh", "to the new key")).text == "to the new key"


def test_verified_peer_whose_key_changes_is_blocked_until_trusted(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    alice.verify_info("bob")  # /verify shows the safety number; /trust needs that first
    alice.trust("bob")
    assert got(bob, send(alice, "bob", "ecdh", "verified")).verified is False  # bob did not
    assert got(alice, send(bob, "alice", "ecdh", "ok")).verified is True
    assert alice.is_verified("bob")

    mallory_as_bob = manager(tmp_path, "bob", home="mallory")
    with pytest.raises(TrustError, match=r"/verify bob, then /trust bob"):
        start(alice, "bob", publish(mallory_as_bob, "ecdh"))
    assert not alice.is_verified("bob")
    # The verified key stays pinned and its session is kept (the real bob's messages still
    # decrypt); the new key waits as pending, and nothing can be sent until it is trusted.
    assert alice.active_session("bob", "ecdh") is not None
    with pytest.raises(TrustError):
        alice.trust("bob")  # the new key was never shown
    # The block survives a restart.
    alice = reopen(alice)
    with pytest.raises(TrustError):
        alice.check_can_send("bob")
    with pytest.raises(TrustError):
        start(alice, "bob", publish(mallory_as_bob, "ecdh"))

    # Only an explicit /trust of the new key lifts it.
    info = alice.verify_info("bob")
    assert info["verified"] is False
    alice.trust("bob")
    start(alice, "bob", publish(mallory_as_bob, "ecdh"))
    assert got(mallory_as_bob, send(alice, "bob", "ecdh", "re-verified")).verified is False


def test_incoming_handshake_under_another_key_of_a_verified_peer_is_quarantined(
    tmp_path: Path,
) -> None:
    """Not shown, not installed, id not remembered, no block; /verify shows the new key."""
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(bob, "alice", publish(alice, "ecdh"))
    got(alice, send(bob, "alice", "ecdh", "first"))
    alice.verify_info("bob")
    alice.trust("bob")
    sessions_before = dict(alice.state.sessions)
    impostor = manager(tmp_path, "bob", home="impostor")
    start(impostor, "alice", publish(alice, "ecdh"))
    forged = send(impostor, "alice", "ecdh", "it is me, bob")
    received, warnings = receive(alice, forged)
    assert received is None
    assert warnings == [
        "a message claiming to be from bob arrived under a new, unverified key; "
        "/verify bob shows it"
    ]
    assert alice.state.sessions == sessions_before
    alice.check_can_send("bob")  # the verified session goes on
    assert alice.verify_info("bob")["fingerprint"] == fingerprint(
        impostor.identity.public_bytes()
    )
    real = got(alice, send(bob, "alice", "ecdh", "real"))
    assert (real.text, real.verified, real.missing) == ("real", True, 0)


def test_safety_numbers_agree_and_trust_needs_a_pin(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    got(bob, send(alice, "bob", "ecdh", "hi"))
    a, b = alice.verify_info("bob"), bob.verify_info("alice")
    assert a["safety_number"] == b["safety_number"]
    assert (a["fingerprint"], a["own_fingerprint"]) == (b["own_fingerprint"], b["fingerprint"])
    with pytest.raises(KeyError):
        alice.trust("carol")
    with pytest.raises(KeyError):
        alice.verify_info("carol")


def test_message_without_session_or_handshake_is_refused(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    got(bob, send(alice, "bob", "ecdh", "one"))
    got(alice, send(bob, "alice", "ecdh", "reply"))  # alice stops sending the handshake
    no_handshake = send(alice, "bob", "ecdh", "two")
    fresh_bob = SessionManager(bob.keystore)
    fresh_bob.state.sessions.clear()
    with pytest.raises(CryptoError, match="no session with alice"):
        receive(fresh_bob, no_handshake)


def test_prekeys_are_published_once_and_topped_up(tmp_path: Path) -> None:
    bob = manager(tmp_path, "bob")
    signed, one_time = bob.prekeys.to_publish("ecdh", 0)
    assert signed is not None and len(one_time) == 2
    # A fresh signed prekey is not replaced; only the missing one-time keys are made.
    signed_again, more = bob.prekeys.to_publish("ecdh", 1)
    assert signed_again is None and len(more) == 1
    assert len({i for i, _ in one_time + more}) == 3
    assert bob.prekeys.to_publish("ecdh", 2) == (None, [])


def test_simultaneous_first_contact_converges(tmp_path: Path) -> None:
    """Both sides start a session and send before either first message arrives (a room,
    typically): every later message still decrypts, in both directions."""
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    start(bob, "alice", publish(alice, "ecdh"))
    from_alice = send(alice, "bob", "ecdh", "hi bob (a)")
    from_bob = send(bob, "alice", "ecdh", "hi alice (b)")
    assert got(bob, from_alice).text == "hi bob (a)"
    assert got(alice, from_bob).text == "hi alice (b)"
    for i in range(3):
        assert got(bob, send(alice, "bob", "ecdh", f"a{i}")).text == f"a{i}"
        assert got(alice, send(bob, "alice", "ecdh", f"b{i}")).text == f"b{i}"
    # And it survives both keystores being reopened.
    alice, bob = reopen(alice), reopen(bob)
    assert got(bob, send(alice, "bob", "ecdh", "after restart")).text == "after restart"
    assert got(alice, send(bob, "alice", "ecdh", "me too")).text == "me too"


def test_forged_handshake_does_not_take_over_a_verified_peer(tmp_path: Path) -> None:
    """A relay injecting one handshake under bob's name is quarantined: the real bob's
    messages keep decrypting, his verified key stays pinned, and only trusting the new key
    after /verify showed it changes that."""
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(bob, "alice", publish(alice, "ecdh"))
    got(alice, send(bob, "alice", "ecdh", "hello"))
    got(bob, send(alice, "bob", "ecdh", "hello back"))
    alice.verify_info("bob")
    alice.trust("bob")

    forger = manager(tmp_path, "bob", home="forger")
    start(forger, "alice", publish(alice, "ecdh"))
    forged, warnings = receive(alice, send(forger, "alice", "ecdh", "trust mallory"))
    assert forged is None
    assert warnings and "new, unverified key" in warnings[0]
    assert alice.state.pins["bob"].identity_key == bob.identity.public_bytes()
    assert alice.state.pins["bob"].verified

    real = got(alice, send(bob, "alice", "ecdh", "the real bob"))
    assert (real.text, real.verified) == ("the real bob", True)
    alice.check_can_send("bob")  # the verified session is still the one we send with
    # /verify shows the new key (next to the pinned one); trusting it is the user's call.
    shown = alice.verify_info("bob")
    assert shown["fingerprint"] == fingerprint(forger.identity.public_bytes())
    assert shown["pinned_fingerprint"] == fingerprint(bob.identity.public_bytes())
    alice.trust("bob")
    assert alice.state.pins["bob"].identity_key == forger.identity.public_bytes()


def test_a_replayed_first_message_does_not_replace_the_session(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh", with_one_time=False))
    first = send(alice, "bob", "ecdh", "first")
    got(bob, first)
    got(alice, send(bob, "alice", "ecdh", "reply"))
    received, _ = receive(bob, first)  # the relay replays the handshake envelope
    assert received is None
    assert got(alice, send(bob, "alice", "ecdh", "still fine")).text == "still fine"
    assert got(bob, send(alice, "bob", "ecdh", "and back")).text == "and back"


def test_trust_needs_the_key_that_verify_showed(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh"))
    with pytest.raises(TrustError, match="last shown"):
        alice.trust("bob")
    alice.verify_info("bob")
    alice.trust("bob")
    assert alice.is_verified("bob")
