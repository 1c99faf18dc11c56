"""Admin commands (and their refusal for plain users) and the prekey directory."""

from __future__ import annotations

from securechat import wire
from securechat.config import ONE_TIME_LOW
from securechat.server import keydir
from tests.roomkit import RoomKit
from tests.server.harness import Harness, make_config, otk_record, spk_record


def test_admin_commands() -> None:
    """An admin lists users, adds one (who can log in), kicks and removes users."""
    h = Harness()
    root = h.online("root", role="admin")
    b = h.online("bob")
    users = root.reply(wire.AdminList(id=1), wire.AdminUsers).users
    assert users == (wire.UserInfo("bob", "user", True), wire.UserInfo("root", "admin", True))
    add = wire.AdminAddUser(id=2, user="erin", role="user", password="erin-initial-pw")
    assert root.reply(add, wire.Ok).id == 2
    assert root.error(add).code == wire.E_USER_EXISTS
    assert root.error(wire.AdminAddUser(id=3, user="Bad Name", role="user")).code == (
        wire.E_BAD_NAME
    )
    assert root.error(wire.AdminAddUser(id=4, user="zed", role="god")).code == wire.E_BAD_REQUEST
    e = h.connect()
    assert e.login("erin", "erin-initial-pw").role == "user"
    assert root.reply(wire.AdminKick(id=5, user="bob"), wire.Ok).id == 5
    assert [m.code for m in b.received() if isinstance(m, wire.Bye)] == [wire.E_KICKED]
    assert b.transport.disconnecting and "bob" not in h.relay.sessions
    assert root.error(wire.AdminKick(id=6, user="bob")).code == wire.E_NOT_ONLINE
    assert root.reply(wire.AdminRemoveUser(id=7, user="erin"), wire.Ok).id == 7
    assert [m.code for m in e.received() if isinstance(m, wire.Bye)] == [wire.E_REMOVED]
    assert root.error(wire.AdminRemoveUser(id=8, user="erin")).code == wire.E_NO_SUCH_USER


def test_admin_commands_refused_for_users() -> None:
    """A plain user gets not-permitted for every admin command and nothing changes."""
    h = Harness()
    b = h.online("bob")
    h.add_user("carol")
    for msg in (
        wire.AdminList(id=1), wire.AdminAddUser(id=2, user="x", role="admin"),
        wire.AdminRemoveUser(id=3, user="carol"), wire.AdminKick(id=4, user="carol"),
    ):  # fmt: skip
        assert b.error(msg).code == wire.E_NOT_PERMITTED
    assert sorted(h.store._users) == ["bob", "carol"]


def test_one_time_prekey_is_handed_out_once_and_owner_warned() -> None:
    """Each one-time prekey goes to one fetcher; the owner hears when few are left."""
    h = Harness(make_config(policy={"one_time_per_peer_burst": 0}))  # see test_relay_abuse
    a, b = h.online("alice"), h.online("bob")
    one_time = tuple(wire.OneTimePrekey(i, otk_record(i)) for i in range(1, 12))
    stored = a.reply(
        wire.PublishPrekeys(id=1, backend="ecdh", signed_prekey=spk_record(), one_time=one_time,
                            identity_key=b"I" * 32),
        wire.PrekeysStored,
    )  # fmt: skip
    assert stored.one_time_count == 11
    seen = []
    for n in range(12):
        bundle = b.reply(wire.FetchBundle(id=10 + n, user="alice", backend="ecdh"), wire.Bundle)
        assert (bundle.identity_key, bundle.signed_prekey) == (b"I" * 32, spk_record())
        seen.append(bundle.one_time_id)
    assert seen == [*range(1, 12), None]
    lows = [m for m in a.received() if isinstance(m, wire.PrekeysLow)]
    assert lows[0] == wire.PrekeysLow(backend="ecdh", remaining=ONE_TIME_LOW["ecdh"] - 1)
    assert lows[-1].remaining == 0


def test_prekey_backend_checks_and_missing_bundle() -> None:
    """Disallowed backends and unknown users are refused; no keys is no-bundle."""
    h = Harness(make_config(crypto={"backends": ["ecdh"]}))
    a = h.online("alice")
    h.add_user("bob")
    pub = wire.PublishPrekeys(id=1, backend="rsa", one_time=())
    assert a.error(pub).code == wire.E_BACKEND_NOT_ALLOWED
    assert a.error(wire.FetchBundle(id=2, user="bob", backend="rsa")).code == (
        wire.E_BACKEND_NOT_ALLOWED
    )
    assert a.error(wire.FetchBundle(id=3, user="ghost", backend="ecdh")).code == (
        wire.E_NO_SUCH_USER
    )
    assert a.error(wire.FetchBundle(id=4, user="bob", backend="ecdh")).code == wire.E_NO_BUNDLE


def test_login_warns_about_missing_one_time_prekeys() -> None:
    """At login, a user with few one-time prekeys for an allowed backend is told."""
    h = Harness(make_config(crypto={"backends": ["ecdh"], "default_backend": "ecdh"}))
    h.add_user("alice")
    c = h.connect()
    c.login("alice")
    h.clock.advance(0)
    assert wire.PrekeysLow(backend="ecdh", remaining=0) in c.received()


def test_one_time_prekeys_are_capped_per_backend() -> None:
    """A publish that would leave more than MAX_STORED_ONE_TIME keys is refused whole."""
    h = Harness(make_config(policy={"send_rate": 100.0, "send_burst": 100}))
    a = h.online("alice")

    def publish(rid: int, first: int, n: int) -> wire.PublishPrekeys:
        keys = tuple(wire.OneTimePrekey(i, otk_record(i)) for i in range(first, first + n))
        return wire.PublishPrekeys(id=rid, backend="ecdh", signed_prekey=spk_record(),
                                   one_time=keys, identity_key=b"I" * 32)  # fmt: skip

    cap = keydir.MAX_STORED_ONE_TIME
    assert a.reply(publish(1, 0, cap - 1), wire.PrekeysStored).one_time_count == cap - 1
    assert a.reply(publish(2, 0, cap), wire.PrekeysStored).one_time_count == cap  # 1 new
    err = a.error(publish(3, cap, 1))
    assert err.code == wire.E_TOO_LARGE and str(cap) in err.message
    assert h.store.count_one_time_prekeys("alice", "ecdh").result == cap


def test_key_and_social_requests_take_send_tokens() -> None:
    """publish_prekeys, contact and room changes spend the sender's rate like sends."""
    h, kit = Harness(make_config(policy={"send_rate": 1.0, "send_burst": 5})), RoomKit()
    a = h.online("alice")
    h.add_user("bob")
    requests: list[wire.Message] = [
        wire.PublishPrekeys(id=1, backend="ecdh", signed_prekey=b"S" * 64, one_time=()),
        wire.ContactRequest(id=2, user="bob"),
        wire.ContactRemove(id=3, user="bob"),
        wire.ContactAccept(id=4, user="bob"),  # refused (no request), still charged
        wire.RoomPost(id=5, room="#r", event=kit.make("#r", "alice", wire.CREATE)),
    ]
    for msg in requests:
        rid = getattr(msg, "id", None)
        replies = [m for m in a.request(msg) if getattr(m, "id", None) == rid]
        assert not (isinstance(replies[0], wire.Error) and replies[0].code == wire.E_RATE_LIMITED)
    for msg in requests:
        err = a.error(msg)
        assert err.code == wire.E_RATE_LIMITED and err.retry_after is not None
    h.clock.advance(1.0)
    invite = kit.make("#r", "alice", wire.INVITE, "bob")
    assert a.reply(wire.RoomPost(id=7, room="#r", event=invite), wire.Ok)
    assert a.reply(wire.ContactList(id=8), wire.Contacts)  # reads stay free


def test_admin_add_user_follows_securechat_admin_rules() -> None:
    """No empty password; no password-less account unless certificate login is enabled."""
    h = Harness(make_config(auth={"methods": ["password", "publickey"]}))
    root = h.online("root", role="admin")
    assert root.error(wire.AdminAddUser(id=1, user="dan", role="user")).code == (
        wire.E_BAD_REQUEST
    )
    empty = wire.AdminAddUser(id=2, user="dan", role="user", password="")
    assert root.error(empty).code == wire.E_BAD_REQUEST
    assert h.store.get_user("dan").result is None
    cert = Harness(make_config(auth={"methods": ["password", "certificate"]}))
    admin = cert.online("root", role="admin")
    assert admin.reply(wire.AdminAddUser(id=3, user="dan", role="user"), wire.Ok).id == 3
