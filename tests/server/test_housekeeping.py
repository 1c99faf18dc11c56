"""The daemon's periodic housekeeping keeps the rate-limit tables from growing forever, and
live sessions follow account changes made by ``securechat-admin`` on the database."""

from __future__ import annotations

import dataclasses

from securechat import wire
from tests.server.harness import Harness, item, make_config


def test_housekeeping_forgets_idle_send_and_login_buckets() -> None:
    h = Harness()
    alice = h.online("alice")
    h.online("bob")
    alice.send(wire.Send(id=alice.next_id(), items=(item("bob"),)))
    h.clock.advance(0)
    wrong = h.connect()
    wrong.request(wire.LoginPassword(id=wrong.next_id(), user="alice", password="not-it-at-all"))
    h.clock.advance(0)
    assert len(h.relay.limiter.table) >= 1
    assert len(h.auth._throttle.pairs) >= 1

    h.factory.housekeeping()  # buckets still draining: nothing idle yet
    assert len(h.auth._throttle.pairs) >= 1

    h.clock.advance(3600)  # every bucket refills: all idle
    h.factory.housekeeping()
    assert len(h.relay.limiter.table) == 0
    assert len(h.auth._throttle.pairs) == 0
    assert len(h.auth._throttle.addresses) == 0


def _removed_offline(h: Harness, name: str) -> None:
    """What ``securechat-admin user remove NAME`` does: the database only, no relay call."""
    assert h.store.remove_user(name).result is True


def test_admin_commands_reread_the_role_from_the_store() -> None:
    """An admin removed or demoted behind the server's back can no longer run admin
    commands with the role cached in its session."""
    h = Harness()
    root = h.online("root", role="admin")
    ops = h.online("ops", role="admin")
    h.add_user("carol")
    _removed_offline(h, "root")
    for msg in (
        wire.AdminList(id=1), wire.AdminAddUser(id=2, user="x", role="admin"),
        wire.AdminRemoveUser(id=3, user="carol"), wire.AdminKick(id=4, user="ops"),
    ):  # fmt: skip
        assert root.error(msg).code == wire.E_NOT_PERMITTED
    assert "x" not in h.store._users and "carol" in h.store._users
    assert "ops" in h.relay.sessions

    h.store._users["ops"] = dataclasses.replace(h.store._users["ops"], role="user")
    assert ops.error(wire.AdminList(id=5)).code == wire.E_NOT_PERMITTED
    assert h.relay.sessions["ops"].role == "user"


def test_check_accounts_closes_sessions_of_removed_users() -> None:
    """The periodic check kicks a removed user's live session and drops them from the
    caches, so their contacts can no longer be messaged and they can no longer send."""
    h = Harness(make_config(policy={"messaging": "contacts"}))
    alice, bob = h.online("alice"), h.online("bob")
    alice.reply(wire.ContactRequest(id=1, user="bob"), wire.ContactState)
    bob.reply(wire.ContactAccept(id=2, user="alice"), wire.ContactState)
    bob.received()
    _removed_offline(h, "bob")
    assert "bob" in h.relay.sessions  # nothing told the relay yet

    d = h.factory.check_accounts()
    assert d.result == 1
    h.clock.advance(0)
    assert [m.code for m in bob.received() if isinstance(m, wire.Bye)] == [wire.E_REMOVED]
    assert bob.closed and "bob" not in h.relay.sessions
    assert "bob" not in h.relay.sessions["alice"].contacts
    assert "alice" in h.relay.sessions and not alice.closed
    assert h.factory.housekeeping().result == 0  # housekeeping runs the same check
