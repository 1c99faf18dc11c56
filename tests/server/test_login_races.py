"""Logins racing other requests: a second login on the same connection, and contact
changes made while the relay is still reading a login's contacts and rooms."""

from __future__ import annotations

from securechat import wire
from tests.server.harness import GatedStore, Harness


def _gate(h: Harness, *names: str) -> GatedStore:
    store = GatedStore(h.store)
    store.hold.update(names)
    h.relay.store = store  # type: ignore[assignment]
    return store


def test_second_login_while_the_relay_registers_the_first_is_refused() -> None:
    """The connection counts as logging in until its session is started."""
    h = Harness()
    h.add_user("alice")
    h.add_user("bob")
    store = _gate(h, "list_contacts")
    c = h.connect()
    first = wire.LoginPassword(id=c.next_id(), user="alice", password=h.password("alice"))
    c.send(first)
    assert store.held  # the password checked out; the relay is reading alice's contacts
    second = wire.LoginPassword(id=c.next_id(), user="bob", password=h.password("bob"))
    err = c.error(second)
    assert err.code == wire.E_BAD_REQUEST
    store.release()
    h.clock.advance(0)
    replies = [m for m in c.received() if getattr(m, "id", None) == first.id]
    assert replies == [wire.LoggedIn(id=first.id, user="alice", role="user")]
    assert set(h.relay.sessions) == {"alice"}
    assert c.proto.session is h.relay.sessions["alice"]
    assert not c.proto.logging_in
    assert c.error(second).code == wire.E_ALREADY_AUTHENTICATED


def test_failed_login_clears_the_in_progress_flag() -> None:
    h = Harness()
    h.add_user("alice")
    c = h.connect()
    bad = wire.LoginPassword(id=c.next_id(), user="alice", password="wrong-password-x")
    assert c.error(bad).code == wire.E_AUTH_FAILED
    assert not c.proto.logging_in
    c.login("alice")
