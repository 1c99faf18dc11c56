"""Replays of a first message, with the real SessionManager and keystore (no sockets).

The attack from issue 8: the relay withholds one-time prekeys, so alice's first message to bob
is protected only by bob's signed prekey; it then replays that message once its id has left
bob's 4,096-entry seen list and its chain the retired chains. Handshake v2 keeps, per signed
prekey, the transcript hash of every first message accepted under it (in the keystore, for the
prekey's whole life), so the replay is refused however much was received since.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from securechat.client import prekeys as prekeys_mod
from securechat.client.keystore import Keystore
from securechat.client.sessions import SessionManager
from securechat.crypto.errors import ReplayedHandshake
from securechat.crypto.prekeys import SIGNED_PREKEY_GRACE
from tests.client.test_sessions import PASS, got, manager, publish, receive, reopen, send, start


@pytest.fixture(autouse=True)
def few_one_time_prekeys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prekeys_mod, "ONE_TIME_TARGET", {"ecdh": 2, "dh": 2, "rsa": 1, "hybrid": 2})


def test_first_message_replayed_after_5000_messages_is_refused(tmp_path: Path) -> None:
    alice, bob = manager(tmp_path, "alice"), manager(tmp_path, "bob")
    start(alice, "bob", publish(bob, "ecdh", with_one_time=False))  # OPKs withheld
    first = send(alice, "bob", "ecdh", "wire 100 EUR")
    assert got(bob, first).text == "wire 100 EUR"
    for i in range(5000):
        got(bob, send(alice, "bob", "ecdh", f"message {i}"))
        if i % 100 == 99:  # 50 ratchet turns: the first chain is long retired
            got(alice, send(bob, "alice", "ecdh", f"reply {i}"))
    assert first.mid not in bob.keystore.state.seen["alice"]  # evicted from the seen list
    bob = reopen(bob)  # the cache is in the keystore, not in memory
    current = dict(bob.state.sessions)
    with pytest.raises(ReplayedHandshake, match="replay refused"):
        receive(bob, first)
    assert bob.state.sessions == current  # the real session was not replaced
    assert got(bob, send(alice, "bob", "ecdh", "still here")).text == "still here"
    assert got(alice, send(bob, "alice", "ecdh", "and back")).text == "and back"


def test_replay_cache_is_deleted_with_its_signed_prekey(tmp_path: Path) -> None:
    now = [1_700_000_000.0]
    bob = SessionManager(manager(tmp_path, "bob").keystore, clock=lambda: now[0])
    alice = SessionManager(manager(tmp_path, "alice").keystore, clock=lambda: now[0])
    start(alice, "bob", publish(bob, "ecdh", with_one_time=False))
    got(bob, send(alice, "bob", "ecdh", "hi"))
    [name] = bob.state.extra["replay"]
    spk_id = int(name.rsplit(":", 1)[1])
    assert any(k.endswith(f":{spk_id}") and k.startswith("spk:") for k in bob.state.prekeys)
    # Past expiry plus grace, the next publish replaces the prekey and deletes both.
    now[0] += prekeys_mod.SIGNED_PREKEY_LIFETIME + SIGNED_PREKEY_GRACE + 1
    signed, _ = bob.prekeys.to_publish("ecdh", 2)
    assert signed is not None
    assert name not in bob.state.extra["replay"]
    assert not any(k == f"spk:{name.rsplit(':', 1)[0]}:{spk_id}" for k in bob.state.prekeys)


def test_identity_kem_key_is_made_once_and_kept(tmp_path: Path) -> None:
    bob = manager(tmp_path, "bob")
    publish(bob, "ecdh")
    ikem = {k: v for k, v in bob.state.prekeys.items() if k.startswith("ikem:")}
    assert list(ikem) == ["ikem:ecdh:x25519"]
    bob = reopen(bob)
    bob.state.extra.pop("current_spk:ecdh:x25519")  # force a new signed prekey
    signed, _ = bob.prekeys.to_publish("ecdh", 2)
    assert signed is not None
    assert {k: v for k, v in bob.state.prekeys.items() if k.startswith("ikem:")} == ikem
    assert Keystore.open(bob.keystore.path.parent, PASS).state.prekeys.keys() >= ikem.keys()


def test_a_keystore_from_protocol_v1_drops_its_sessions_and_replaces_v1_prekeys(
    tmp_path: Path,
) -> None:
    """What an upgraded client does with a keystore saved before protocol v2."""
    from securechat.crypto.envelope import backend_id
    from securechat.crypto.prekeys import generate_signed_prekey

    bob = manager(tmp_path, "bob")
    kem = bob.prekeys.local_kem("ecdh")
    bid = backend_id(kem)
    old, pair = generate_signed_prekey(bob.identity, kem, 7, 1_700_000_000.0, 10**9)  # v1
    bob.state.prekeys[f"spk:{bid}:7"] = prekeys_mod._pack(old.to_bytes(), pair)
    bob.state.extra[f"current_spk:{bid}"] = 7
    bob.state.sessions["alice|ecdh:x25519"] = b"a v1 session"
    bob.state.extra["archive"] = {"alice|ecdh:x25519": [b"an older one"]}
    del bob.state.counters["protocol"]
    bob.keystore.save()
    upgraded = SessionManager(Keystore.open(bob.keystore.path.parent, PASS))
    assert upgraded.state.sessions == {} and "archive" not in upgraded.state.extra
    signed, _ = upgraded.prekeys.to_publish("ecdh", 2)
    assert signed is not None  # a v2 record replaces the v1 one, which is deleted
    current = upgraded.prekeys.current_signed(bid)
    assert current is not None and current.identity_kem is not None
    assert f"spk:{bid}:7" not in upgraded.state.prekeys
