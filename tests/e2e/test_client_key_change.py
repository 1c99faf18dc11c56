"""End-to-end (issue 9): a peer re-creates their account while sessions with them exist.

bob's account is removed with ``securechat-admin user remove`` and bob registers again with
a fresh ``--home`` (new identity key). carol never verified bob: she is warned and her
message goes under a new session, shown once. alice had verified bob: she is warned, her
message is held (nothing reaches the new bob) until ``/verify`` (which shows the key the
relay serves next to the pinned one) and ``/trust``, then it goes, once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import utils

from tests.e2e.test_client_e2e import (
    BACKENDS,
    HASH,
    OTHER,
    Relay,
    _block,
    _reactor,
    finish_all,
    marker,
)

pytest.importorskip("securechat.server.protocol")


@pytest.fixture(scope="module", params=BACKENDS)
def relay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Relay, str]]:  # fmt: skip
    backend: str = request.param
    r = Relay(
        tmp_path_factory.mktemp(f"relay-rekey-{backend}"),
        {"auth": HASH,
         "crypto": {"backends": [backend, OTHER[backend]], "default_backend": backend}},
    )  # fmt: skip
    _block(r.start())
    yield r, backend
    if r.daemon is not None:
        _block(r.stop())


async def remove_account(r: Relay, user: str) -> None:
    code = "from securechat.admin import main; raise SystemExit(main())"
    args = ("-c", code, "--config", str(r.config), "user", "remove", user)
    out, err, status = await utils.getProcessOutputAndValue(
        sys.executable, args, env=dict(os.environ), path=str(r.root), reactor=_reactor()
    )
    assert status == 0, (out, err)


@pytest_twisted.ensureDeferred
async def test_key_change_with_live_sessions(relay: tuple[Relay, str]) -> None:
    r, backend = relay
    a, b, c = (f"{n}.{backend}" for n in ("alice3", "bob3", "carol3"))
    m = marker(f"rekey-{backend}")
    alice, bob, carol = await r.online(a, b, c, register=True, backend=backend)
    alice.send(f"/msg {b} {m} old alice")
    carol.send(f"/msg {b} {m} old carol")
    for _ in range(2):
        await bob.expect("message")
    alice.send(f"/verify {b}")
    pinned = (await alice.expect("verify", user=b))["fingerprint"]
    alice.send(f"/trust {b}")
    await alice.expect("info", user=b, verified=True)
    await bob.finish()

    await remove_account(r, b)
    fresh = r.root / "homes" / f"{b}-reinstalled"
    bob = await r.client(b, register=True, backend=backend,
                         extra=("--home", str(fresh))).logged_in()  # fmt: skip

    carol.send(f"/msg {b} {m} new carol")
    await carol.expect_text("warning", f"the identity key of {b} has changed")
    got = await bob.expect("message", **{"from": c})
    assert got["text"] == f"{m} new carol"
    assert (await carol.expect("sent", id=got["id"]))["status"] == "delivered"

    alice.send(f"/msg {b} {m} new alice")
    await alice.expect_text("warning", "sending is blocked")
    held = await alice.expect("error", status="held")
    alice.send(f"/verify {b}")
    shown = await alice.expect("verify", user=b)
    assert shown["pinned_fingerprint"] == pinned != shown["served_fingerprint"]
    assert shown["fingerprint"] == shown["served_fingerprint"] and shown["verified"] is False
    alice.send(f"/trust {b}")
    got = await bob.expect("message", **{"from": a})
    assert got["text"] == f"{m} new alice" and got["id"] == held["id"]
    await finish_all(alice, bob, carol)
    assert [e["text"] for e in bob.all("message")] == [f"{m} new carol", f"{m} new alice"]
    assert bob.all("warning") == [], bob.all("warning")  # nothing it could not open
    assert carol.all("error") == []
    r.assert_never_saw(m)


@pytest_twisted.ensureDeferred
async def test_receipts_received_and_failed_then_recovered(relay: tuple[Relay, str]) -> None:
    """``received`` for each backend; a peer that lost its session state answers
    ``failed``, and the sender's automatic resend (same id) is shown once."""
    from securechat.client.keystore import Keystore

    r, backend = relay
    a, b = (f"{n}.{backend}" for n in ("alice4", "bob4"))
    m = marker(f"receipts-{backend}")
    alice, bob = await r.online(a, b, register=True, backend=backend)
    alice.send(f"/msg {b} {m} one")
    got = await bob.expect("message", **{"from": a})
    receipt = await alice.expect("receipt", id=got["id"])
    assert (receipt["status"], receipt["from"]) == ("received", b)
    bob.send(f"/msg {a} {m} two")
    await alice.expect("message", **{"from": b})
    await bob.finish()

    # bob loses his session state (say, an old backup restored), then comes back.
    store = Keystore.open(r.home(b), f"password of {b}!")
    store.state.sessions.clear()
    store.state.extra.pop("archive", None)
    store.save()
    bob = await r.client(b, backend=backend).logged_in()
    alice.send(f"/msg {b} {m} three")
    failed = await alice.expect("receipt", status="failed")
    received = await alice.expect("receipt", id=failed["id"], status="received")
    got = await bob.expect("message", **{"from": a})
    assert got["text"] == f"{m} three" and got["id"] == received["id"]
    await finish_all(alice, bob)
    assert [e["text"] for e in bob.all("message")] == [f"{m} three"]
    r.assert_never_saw(m)
