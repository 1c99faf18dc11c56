"""Rooms against a lying relay: it cannot add a member, remove one, or replay or reorder
room events; the client encrypts only to the members it verified from signed events.

Each test builds its room with the real commands through the relay (every event signed by
its actor and forwarded by the honest daemon), then scripts the lie.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from securechat import wire
from tests.adversary.arena import DEFAULT_OVERRIDES, Arena
from tests.adversary.conftest import _block
from tests.adversary.relay import Link, MaliciousRelay
from tests.e2e.clientproc import ClientProcess
from tests.roomkit import RoomKit


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """The usual arena, allowing the ten registrations from one address this module makes
    (every client reaches the daemon from the relay's 127.0.0.1)."""
    auth = {**DEFAULT_OVERRIDES["auth"], "registration_address_burst": 20}
    a = Arena(Path(tmp_path_factory.mktemp("adversary-rooms")),
              {**DEFAULT_OVERRIDES, "auth": auth})  # fmt: skip
    _block(a.start())
    yield a
    _block(a.stop())


async def _room(room: str, owner: ClientProcess, *members: tuple[str, ClientProcess]) -> None:
    """``owner`` creates ``room`` and invites ``members``, who accept."""
    owner.send(f"/join {room}")
    await owner.expect("room", room=room, action="create")
    for name, c in members:
        owner.send(f"/invite {name} {room}")
        await c.expect("room", room=room, action="invite", user=name)
        c.send(f"/join {room}")
        await owner.expect("room", room=room, action="join", by=name)


def _room_sends(relay: MaliciousRelay, user: str, room: str) -> list[str]:
    """Recipients of every room envelope ``user`` handed the relay for ``room``."""
    return [i.to for s in relay.sent_by_clients(wire.Send, user) for i in s.items
            if i.room == room]  # fmt: skip


@pytest_twisted.ensureDeferred
async def test_ghost_member_gets_nothing_and_is_named(arena: Arena, relay: MaliciousRelay) -> None:
    """The relay answers the member list with an extra user ("ghost", a real account it
    controls): the warning names it, and no envelope is ever encrypted to it."""
    alice, bob, ghost = await arena.online("g-alice", "g-bob", "g-ghost", register=True)
    await _room("#g", alice, ("g-bob", bob))

    def add_ghost(_: Link, m: wire.Room) -> wire.Message:
        return wire.Room(id=m.id, room=m.room, members=(*m.members, "g-ghost"))

    relay.rewrite(wire.Room, add_ghost)
    alice.send("/msg #g for members only")
    warning = await alice.expect("warning", room="#g")
    assert warning["extra"] == ["g-ghost"] and "g-ghost" in warning["text"]
    sent = await alice.expect("sent", to="#g")
    assert sent["recipients"] == ["g-bob"]
    assert (await bob.expect("message", **{"from": "g-alice"}))["text"] == "for members only"
    alice.send("/members #g")
    members = await alice.expect("members", room="#g")
    assert members["members"] == ["g-alice", "g-bob"]
    for c in (alice, bob, ghost):
        await c.finish()
    assert "g-ghost" not in _room_sends(relay, "g-alice", "#g")
    assert ghost.all("message") == []


@pytest_twisted.ensureDeferred
async def test_relay_removed_member_still_gets_the_message(
    arena: Arena, relay: MaliciousRelay
) -> None:
    """The relay claims carol left (a member list without her, a room update) but has no
    signed event for it: alice is warned that carol is missing and still encrypts to her;
    a removal event the relay signed itself is refused."""
    alice, bob, carol = await arena.online("r-alice", "r-bob", "r-carol", register=True)
    await _room("#rr", alice, ("r-bob", bob), ("r-carol", carol))
    await bob.expect("room", room="#rr", action="join", by="r-carol")

    def drop_carol(_: Link, m: wire.Room) -> wire.Message:
        return wire.Room(id=m.id, room=m.room, members=tuple(u for u in m.members
                                                             if u != "r-carol"))  # fmt: skip

    relay.rewrite(wire.Room, drop_carol)
    link = await relay.link("r-alice")
    link.push(wire.RoomUpdate(room="#rr", user="r-carol", joined=False))
    # A "remove" with the right chain position, signed by a key the relay made.
    kit = RoomKit()
    events = [f.msg for f in link.frames if isinstance(f.msg, wire.RoomEventPush)]
    last = wire.decode_room_event(events[-1].event)
    forged = kit.event("#rr", "r-alice", wire.REMOVE, "r-carol", seq=last.event.seq + 1,
                       prev=last.hash)  # fmt: skip
    link.push(wire.RoomEventPush(room="#rr", event=forged.blob))
    refused = await alice.expect_text("warning", "refused a room event")
    assert "bad signature" in refused["text"]
    alice.send("/msg #rr carol is still here")
    warning = await alice.expect("warning", room="#rr", missing=["r-carol"])
    assert "r-carol" in warning["text"]
    for c in (bob, carol):
        assert (await c.expect("message", **{"from": "r-alice"}))["text"] == (
            "carol is still here")  # fmt: skip
    assert sorted((await alice.expect("sent", to="#rr"))["recipients"]) == ["r-bob", "r-carol"]
    for c in (alice, bob, carol):
        await c.finish()


@pytest_twisted.ensureDeferred
async def test_reordered_and_replayed_room_events_are_refused(
    arena: Arena, relay: MaliciousRelay
) -> None:
    """The relay replays carol's old join after her removal (no effect: she stays out and
    gets nothing), and serves an invitee the chain out of order (refused, nothing
    verified, so nothing to accept) until it tells the truth again."""
    alice, bob, carol, dave = await arena.online("o-alice", "o-bob", "o-carol", "o-dave",
                                                  register=True)  # fmt: skip
    await _room("#oo", alice, ("o-bob", bob), ("o-carol", carol))
    alice.send("/remove o-carol #oo")
    await bob.expect("room", room="#oo", action="remove", user="o-carol")
    link = await relay.link("o-bob")
    pushed = [f.msg for f in link.frames if isinstance(f.msg, wire.RoomEventPush)]
    # carol's invitation and join again, as signed then: valid by the rules alone.
    replay = [p for p in pushed if wire.decode_room_event(p.event).event.target == "o-carol"
              and wire.decode_room_event(p.event).event.action in (wire.INVITE, wire.JOIN)]
    assert len(replay) == 2
    link.push(*replay)
    bob.send("/members #oo")
    assert (await bob.expect("members", room="#oo"))["members"] == ["o-alice", "o-bob"]
    bob.send("/msg #oo after the replay")
    assert (await bob.expect("sent", to="#oo"))["recipients"] == ["o-alice"]

    def reverse(_: Link, m: wire.RoomEvents) -> wire.Message:
        return wire.RoomEvents(id=m.id, room=m.room, events=tuple(reversed(m.events)))

    handle = relay.rewrite(wire.RoomEvents, reverse)
    alice.send("/invite o-dave #oo")
    refused = await dave.expect_text("warning", "refused a room event")
    assert refused["room"] == "#oo"
    assert dave.all("room", action="invite") == []  # nothing verified, nothing shown
    handle.remove()
    dave.send("/join #oo")  # honest again: dave reads the chain, verifies, accepts
    await alice.expect("room", room="#oo", action="join", by="o-dave")
    for c in (alice, bob, carol, dave):
        await c.finish()
    assert "o-carol" not in _room_sends(relay, "o-bob", "#oo")
    assert all("after the replay" not in e["text"] for e in carol.all("message"))
