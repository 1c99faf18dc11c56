"""The client's verified room rosters (``RoomBook``): only valid, signed, in-order events
change membership, whatever the relay forwards."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from securechat import wire
from securechat.client.rooms import RoomBook, RoomGap
from securechat.crypto.identity import IdentityKeyPair
from tests.roomkit import RoomKit


def book_for(kit: RoomKit, user: str, pins: dict[str, bytes] | None = None) -> RoomBook:
    extra: dict[str, Any] = {}
    return RoomBook(extra, user, kit.key(user), (pins or {}).get, clock=lambda: 5.0)


def chain(kit: RoomKit) -> list[bytes]:
    """alice creates #ops, invites bob and carol, who join."""
    return [
        kit.make("#ops", "alice", wire.CREATE),
        kit.make("#ops", "alice", wire.INVITE, "bob"),
        kit.make("#ops", "bob", wire.JOIN),
        kit.make("#ops", "alice", wire.INVITE, "carol"),
        kit.make("#ops", "carol", wire.JOIN),
    ]


def refused(book: RoomBook, blob: bytes, why: str) -> None:
    before = book.roster("#ops")
    with pytest.raises(wire.RoomEventError, match=why):
        book.apply(blob)
    assert book.roster("#ops") == before  # nothing changed


def test_a_valid_chain_builds_the_roster_and_survives_a_reload() -> None:
    kit = RoomKit()
    extra: dict[str, Any] = {}
    book = RoomBook(extra, "bob", kit.key("bob"), {}.get)
    for blob in chain(kit):
        assert book.apply(blob) is not None
    roster = book.roster("#ops")
    assert roster is not None
    assert sorted(roster.members) == ["alice", "bob", "carol"]
    assert (roster.owner, roster.admins, roster.seq) == ("alice", {"alice"}, 5)
    assert book.recipients("#ops") == {"alice": kit.public("alice"),
                                       "carol": kit.public("carol")}  # fmt: skip
    # What the keystore saves is plain CBOR, and reads back the same.
    again = RoomBook(cbor2.loads(cbor2.dumps(extra)), "bob", kit.key("bob"), {}.get)
    assert again.roster("#ops") == roster


def test_forged_signature_is_refused() -> None:
    """The relay (or anyone) cannot add a member: an invitation signed by a key the chain
    did not admit for its actor is refused, and so is a tampered body."""
    kit = RoomKit()
    book = book_for(kit, "bob")
    for blob in chain(kit):
        book.apply(blob)
    relay_key = IdentityKeyPair.generate()
    forged = kit.event("#ops", "alice", wire.INVITE, "ghost", signer=relay_key)
    refused(book, forged.blob, "bad signature")
    honest = kit.event("#ops", "alice", wire.INVITE, "dave")
    tampered = cbor2.loads(honest.blob)
    tampered["body"] = tampered["body"].replace(b"dave", b"evil")
    refused(book, cbor2.dumps(tampered), "bad signature")
    # A join by someone nobody invited, self-signed: not allowed in an invite-only room.
    refused(book, kit.event("#ops", "ghost", wire.JOIN).blob, "not invited")
    assert "ghost" not in (book.roster("#ops") or wire.Roster("#ops")).members


def test_non_admin_remove_and_non_owner_promote_are_refused() -> None:
    kit = RoomKit()
    book = book_for(kit, "carol")
    for blob in chain(kit):
        book.apply(blob)
    refused(book, kit.event("#ops", "bob", wire.REMOVE, "carol").blob, "not an admin")
    refused(book, kit.event("#ops", "bob", wire.PROMOTE, "bob").blob, "only the owner")
    refused(book, kit.event("#ops", "carol", wire.REMOVE, "alice").blob, "not an admin")
    book.apply(kit.make("#ops", "alice", wire.PROMOTE, "bob"))
    refused(book, kit.event("#ops", "bob", wire.REMOVE, "alice").blob, "may not remove")
    applied = book.apply(kit.make("#ops", "bob", wire.REMOVE, "carol"))
    assert applied is not None and "carol" not in applied.roster.members


def test_reordered_and_replayed_events_are_refused() -> None:
    kit = RoomKit()
    book = book_for(kit, "bob")
    blobs = chain(kit)
    for blob in blobs[:3]:
        book.apply(blob)
    # Ahead of the chain: the client must catch up first (it syncs), nothing applied.
    with pytest.raises(RoomGap):
        book.apply(blobs[4])
    # Replays: an old event again is a harmless duplicate only if it is the very same one.
    assert book.apply(blobs[1]) is None
    remove = kit.event("#ops", "alice", wire.REMOVE, "bob", seq=2, prev=kit.rosters["#ops"].head)
    refused(book, remove.blob, "replay")
    # An event from another point of the chain (a fork the relay shows to some members).
    fork = kit.event("#ops", "alice", wire.INVITE, "mallory", seq=4, prev=bytes(32))
    refused(book, fork.blob, "does not follow")
    # A re-created room of the same name, shown to a client that knows the old one.
    recreate = kit.event("#ops", "alice", wire.CREATE, seq=1, prev=wire.GENESIS, time=2000.0)
    refused(book, recreate.blob, "replay")
    # The right next event still applies.
    assert book.apply(blobs[3]) is not None and book.apply(blobs[4]) is not None


def test_self_certified_keys_must_match_the_pins() -> None:
    """A room "created by alice" under a key other than the one pinned for alice, or a
    join under a key other than the invited one, is refused."""
    kit = RoomKit()
    fake_alice = IdentityKeyPair.generate()
    book = book_for(kit, "bob", pins={"alice": fake_alice.public_bytes()})
    refused(book, kit.event("#ops", "alice", wire.CREATE).blob, "not the one you have pinned")
    book = book_for(kit, "carol")
    blobs = chain(kit)
    for blob in blobs[:2]:
        book.apply(blob)
    other = IdentityKeyPair.generate()
    head = book.roster("#ops")
    assert head is not None
    wrong_key = kit.event("#ops", "bob", wire.JOIN, key=other.public_bytes(), signer=other,
                          seq=3, prev=head.head)  # fmt: skip
    refused(book, wrong_key.blob, "another key than invited")


def test_open_rooms_take_anyone_and_make_checks_the_rules_first() -> None:
    kit = RoomKit()
    book = book_for(kit, "mallory")
    book.apply(kit.make("#lobby", "alice", wire.CREATE, is_open=True))
    signed = book.make("#lobby", wire.JOIN)
    assert book.apply(signed.blob) is not None
    assert book.is_member("#lobby", "mallory")
    with pytest.raises(wire.RoomEventError, match="not an admin"):
        book.make("#lobby", wire.REMOVE, "alice")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.update(extra=1),
        lambda m: m.pop("target"),
        lambda m: m.update(key=b"short"),
        lambda m: m.update(seq=0),
        lambda m: m.update(action="own"),
        lambda m: m.update(v=2),
    ],
)
def test_malformed_bodies_are_refused(mutate: Any) -> None:
    kit = RoomKit()
    honest = kit.event("#ops", "alice", wire.CREATE)
    body = cbor2.loads(honest.body)
    mutate(body)
    new_body = cbor2.dumps(body, canonical=True)
    blob = cbor2.dumps({"body": new_body, "sig": kit.key("alice").sign(
        wire.signed_payload(new_body))})  # fmt: skip
    with pytest.raises(wire.RoomEventError):
        wire.decode_room_event(blob)
    with pytest.raises(wire.RoomEventError):
        wire.decode_room_event(b"\x00" * 2000)
