"""``securechat-admin backup | restore | status``.

The end-to-end test takes a backup with the admin tool while a real relay is accepting a
burst of envelopes, restores it into a stopped relay and checks that the restored relay
delivers every envelope that was accepted before the backup began.
"""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from securechat import admin, wire
from securechat.config import load_config
from securechat.server.store import lockfile, schema
from tests.conftest import ConfigWriter
from tests.e2e.client import WireClient, connect
from tests.e2e.daemon import start_daemon

PASSWORD = "correct horse battery staple"


def run_admin(config: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = admin.main(["--config", str(config), *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def add_user(config: Path, name: str) -> None:
    secret = config.with_name("password.txt")
    secret.write_text(PASSWORD + "\n")
    code, _, err = run_admin(config, "user", "add", name, "--password-file", str(secret))
    assert code == 0, err


def make_database(config: Path) -> Path:
    assert run_admin(config, "init")[0] == 0
    add_user(config, "alice")
    return load_config(config).store.path


def test_backup_includes_what_only_the_wal_holds(
    write_config: ConfigWriter, tmp_path: Path
) -> None:
    """A committed write still in the ``-wal`` file (no checkpoint) is in the backup,
    the copy is one self-contained file with mode 0600, and the source is untouched."""
    config = write_config()
    db = make_database(config)
    writer = schema.connect(str(db))
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute(
        "INSERT INTO users (name, role, created) VALUES ('bob', 'user', 0)"
    )  # committed (autocommit), left in the WAL while this connection stays open
    try:
        assert db.with_name(db.name + "-wal").stat().st_size > 0
        target = tmp_path / "out" / "backup.sqlite3"
        code, out, err = run_admin(config, "backup", str(target))
        assert code == 0, err
        assert "2 users" in out
        assert oct(target.stat().st_mode & 0o777) == "0o600"
        assert not target.with_name(target.name + "-wal").exists()
        copy = sqlite3.connect(target)
        assert [r[0] for r in copy.execute("SELECT name FROM users ORDER BY name")] == [
            "alice", "bob"
        ]
        assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        copy.close()
    finally:
        writer.close()


def test_restore_refuses_while_a_relay_holds_the_database(
    write_config: ConfigWriter, tmp_path: Path
) -> None:
    config = write_config()
    db = make_database(config)
    backup = tmp_path / "b.sqlite3"
    assert run_admin(config, "backup", str(backup))[0] == 0
    held = lockfile.hold_shared(db)  # what a running relay's store does
    try:
        code, _, err = run_admin(config, "restore", str(backup))
        assert code == 1 and "relay is running" in err
        assert "relay\trunning" in run_admin(config, "status")[1]
    finally:
        os.close(held)
    add_user(config, "carol")  # after the backup
    code, _out, err = run_admin(config, "restore", str(backup))
    assert code == 0, err
    users = run_admin(config, "user", "list")[1]
    assert "alice" in users and "carol" not in users
    kept = sqlite3.connect(db.with_name(db.name + ".before-restore"))
    assert kept.execute("SELECT count(*) FROM users WHERE name = 'carol'").fetchone()[0] == 1
    kept.close()


def test_restore_rejects_what_is_not_a_backup(write_config: ConfigWriter, tmp_path: Path) -> None:
    config = write_config()
    make_database(config)
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database" * 100)
    code, _, err = run_admin(config, "restore", str(junk))
    assert code == 1 and "not a securechat database" in err
    code, _, err = run_admin(config, "restore", str(tmp_path / "missing"))
    assert code == 1 and "no backup" in err
    assert "alice" in run_admin(config, "user", "list")[1]  # untouched


def test_status(write_config: ConfigWriter) -> None:
    config = write_config()
    db = make_database(config)
    conn = sqlite3.connect(db)
    conn.execute(
        "INSERT INTO queue (recipient, sender, backend, message_id, room, accepted_at, payload)"
        " VALUES ('alice', 'x', 'ecdh', x'00', NULL, 1000.0, x'0102030405')"
    )
    conn.commit()
    conn.close()
    code, out, err = run_admin(config, "status")
    assert code == 0, err
    facts = dict(line.split("\t", 1) for line in out.splitlines())
    assert facts["schema version"].startswith(str(schema.PACKAGED.latest))
    assert facts["users"] == "1 (0 admins)"
    assert facts["queued envelopes"] == "1" and facts["queued bytes"] == "5"
    assert facts["oldest envelope"].startswith("1970-01-01T00:16:40Z")
    assert facts["relay"] == "not running"
    assert "unreadable" in facts["certificate"]  # no TLS material made yet


def item(payload: bytes) -> wire.SendItem:
    return wire.SendItem(to="bob", backend="ecdh", mid=os.urandom(16), payload=payload)


@pytest_twisted.ensureDeferred
async def test_restored_backup_taken_mid_burst_delivers_everything_accepted_before(
    reactor: Any, write_config: ConfigWriter, tmp_path: Path
) -> None:
    # Bob is a stranger to the senders: lift the stranger quota, the burst is the point.
    config = write_config({"store": {"stranger_limit": 1_000_000, "stranger_bytes": 1 << 30}})
    backup = tmp_path / "mid-burst.sqlite3"
    daemon = await start_daemon(reactor, config)
    ca = load_config(config).tls.ca.read_bytes()
    port = daemon.port
    assert port is not None
    bob = await connect(reactor, port, ca)
    await bob.register("bob", password=PASSWORD)
    await bob.close()
    senders: list[WireClient] = []
    for n in range(3):
        c = await connect(reactor, port, ca)
        await c.register(f"sender{n}", password=PASSWORD)
        await c.login_password(f"sender{n}", PASSWORD)
        senders.append(c)

    accepted: list[bytes] = []
    state = {"backup_done": False, "after": 0}

    async def pump(client: WireClient, n: int) -> None:
        i = 0
        while not state["backup_done"] or state["after"] < 30:
            payloads = [b"s%d-%d-%d" % (n, i, k) for k in range(4)]
            reply = await client.send(*map(item, payloads))
            assert {r.status for r in reply.results} == {wire.STATUS_QUEUED}
            accepted.extend(payloads)
            if state["backup_done"]:
                state["after"] += 1
            i += 1

    pumps = [defer.ensureDeferred(pump(c, n)) for n, c in enumerate(senders)]
    failures: list[Any] = []
    for d in pumps:
        d.addErrback(failures.append)
    try:
        for _ in range(100_000):
            if len(accepted) >= 120 or failures:  # well into the burst
                break
            await senders[0].request(wire.Ping(id=0), wire.Pong)
        assert not failures, failures[0]
        before = set(accepted)  # every one of these got its "accepted" reply already
        code, _out, err = await deferToThread(run_admin, config, "backup", str(backup))
        state["backup_done"] = True
        assert code == 0, err
        await defer.gatherResults(pumps)
        assert not failures, failures[0]
        assert len(set(accepted)) > len(before)  # the burst went on during the backup

        code, _, err = await deferToThread(run_admin, config, "restore", str(backup))
        assert code == 1 and "relay is running" in err
    finally:
        for c in senders:
            await c.close()
        await daemon.stop()

    code, _, err = run_admin(config, "restore", str(backup))
    assert code == 0, err
    in_backup = sqlite3.connect(backup).execute("SELECT count(*) FROM queue").fetchone()[0]
    assert in_backup >= len(before)

    daemon = await start_daemon(reactor, config)
    try:
        assert daemon.port is not None
        bob = await connect(reactor, daemon.port, ca)
        await bob.login_password("bob", PASSWORD)
        delivered: list[bytes] = []
        while len(delivered) < in_backup:
            delivered.extend(d.payload for d in (await bob.next_push(wire.Deliver)).items)
        assert len(delivered) == in_backup == len(set(delivered))
        assert before <= set(delivered) <= set(accepted)
        await bob.close()
    finally:
        await daemon.stop()
