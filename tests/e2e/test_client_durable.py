"""End-to-end (issue 9): every typed message is durable on the client first.

The relay listens on a fixed loopback port so that the clients' reconnect finds it again
after it was stopped. A first message to a peer (no session yet) typed while the server is
down is kept in the encrypted outbox; it is delivered once the server is back, whether the
client stayed up (end of stdin then waits for it) or was killed and started again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted

from tests.e2e.test_client_e2e import HASH, Relay, _block, _free_port, finish_all, marker

pytest.importorskip("securechat.server.protocol")


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    r = Relay(
        tmp_path_factory.mktemp("relay-durable"),
        {"auth": HASH, "crypto": {"backends": ["ecdh"]}, "server": {"port": _free_port()}},
    )
    _block(r.start())
    yield r
    if r.daemon is not None:
        _block(r.stop())


@pytest_twisted.ensureDeferred
async def test_first_messages_typed_while_the_server_is_down(relay: Relay) -> None:
    r = relay
    m = marker("down")
    alice, bob, carol = await r.online("alice", "bob", "carol", register=True)
    await r.stop()
    for c in (alice, bob, carol):
        await c.expect("status", state="disconnected")
    # Neither alice nor carol has a session with bob yet: no bundle can be fetched now.
    alice.send(f"/msg bob {m} from alice, then killed")
    carol.send(f"/msg bob {m} from carol, then end of input")
    await alice.expect_text("info", "kept in the outbox")
    await carol.expect_text("info", "kept in the outbox")
    alice.kill()
    await alice.wait_exit()
    assert carol.transport is not None
    carol.transport.closeStdin()  # must wait for the server, not exit now

    await r.start()  # same port: bob and carol reconnect on their own
    alice = await r.client("alice").logged_in()
    # bob's own reconnect back-off (up to 30 s between tries) bounds these waits.
    got = {(await bob.expect("message", timeout=90))["text"] for _ in range(2)}
    assert got == {f"{m} from alice, then killed", f"{m} from carol, then end of input"}
    assert (await carol.wait_exit(timeout=90)).code == 0
    accepted = ("delivered", "queued")  # queued: accepted before bob was back
    assert [e["status"] in accepted for e in carol.all("sent")] == [True]
    assert (await alice.expect("sent", to="bob"))["status"] in accepted
    await finish_all(alice, bob)
    assert sorted(e["text"] for e in bob.all("message")) == sorted(got)  # each once
    r.assert_never_saw(m)
