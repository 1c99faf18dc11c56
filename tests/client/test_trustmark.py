"""The trust word and mark of a peer, from the keystore's pins."""

from __future__ import annotations

from securechat.client.keystore import KeystoreState, Pin
from securechat.client.trustmark import mark, trust_state


def test_each_state() -> None:
    state = KeystoreState("alice", b"\x01" * 32)
    assert trust_state(state, "bob") == "unknown"
    state.pins["bob"] = Pin(b"k1")
    assert trust_state(state, "bob") == "pinned"
    state.pins["bob"] = Pin(b"k1", verified=True)
    assert trust_state(state, "bob") == "verified"
    state.extra["pending:bob"] = b"k2"  # a verified peer's key changed: held, not replaced
    assert trust_state(state, "bob") == "changed"
    del state.extra["pending:bob"]
    state.pins["bob"] = Pin(b"k2", changed_from=b"k1")  # an unverified peer's key changed
    assert trust_state(state, "bob") == "changed"
    assert [mark(t) for t in ("verified", "pinned", "changed", "unknown")] == [
        " \u2713", "", " !", " ?",
    ]  # fmt: skip
    assert (mark(None, verified=True), mark(None)) == (" \u2713", "")
