"""Logins racing other requests: a second login on the same connection, and contact
changes made while the relay is still reading a login's contacts and rooms."""

from __future__ import annotations

from securechat import wire
from securechat.server.social import MAX_READS
from tests.server.harness import GatedStore, Harness, item, make_config


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


def _contacts(h: Harness, a: str, b: str) -> None:
    h.store.request_contact(a, b)
    h.store.accept_contact(b, a)


def test_contact_removed_while_login_reads_contacts_is_not_allowed() -> None:
    """A removal committed while bob's login waits for its contact read is not lost: the
    login reads again, and bob's new session may no longer message alice."""
    h = Harness(make_config(policy={"messaging": "contacts"}))
    alice = h.online("alice")
    h.add_user("bob")
    _contacts(h, "alice", "bob")
    store = _gate(h, "list_contacts")
    bob = h.connect()
    login = wire.LoginPassword(id=bob.next_id(), user="bob", password=h.password("bob"))
    bob.send(login)
    assert [name for name, *_ in store.held] == ["list_contacts"]  # read before the removal
    alice.reply(wire.ContactRemove(id=1, user="bob"), wire.ContactState)
    store.release()
    h.clock.advance(0)
    assert any(isinstance(m, wire.LoggedIn) for m in bob.received())
    session = h.relay.sessions["bob"]
    assert "alice" not in session.contacts
    store.hold.clear()
    [result] = bob.reply(wire.Send(id=2, items=(item("alice"),)), wire.SendReply).results
    assert result.code == wire.E_NOT_PERMITTED
    assert "bob" not in h.relay.sessions["alice"].contacts


def test_contact_accepted_while_login_reads_contacts_is_seen() -> None:
    h = Harness(make_config(policy={"messaging": "contacts"}))
    h.add_user("bob")
    alice = h.online("alice")
    h.store.request_contact("bob", "alice")
    store = _gate(h, "list_contacts", "user_rooms")
    bob = h.connect()
    bob.send(wire.LoginPassword(id=bob.next_id(), user="bob", password=h.password("bob")))
    alice.reply(wire.ContactAccept(id=1, user="bob"), wire.ContactState)
    store.release()
    h.clock.advance(0)
    assert h.relay.sessions["bob"].contacts == frozenset({"alice"})
    assert h.relay.changes._counts == {}  # nothing kept once no login is in flight


def test_login_that_never_reads_a_stable_state_is_told_to_retry() -> None:
    h = Harness()
    h.add_user("bob")
    store = _gate(h, "list_contacts")
    bob = h.connect()
    login = wire.LoginPassword(id=bob.next_id(), user="bob", password=h.password("bob"))
    bob.send(login)
    for _ in range(MAX_READS):
        h.relay.changes.bump("bob")
        _name, d, results = store.held.pop(0)
        d.callback(results[0])
    h.clock.advance(0)
    [err] = [m for m in bob.received() if getattr(m, "id", None) == login.id]
    assert isinstance(err, wire.Error) and err.code == wire.E_UNAVAILABLE
    assert "bob" not in h.relay.sessions and not bob.proto.logging_in
    assert h.relay.changes._counts == {}
