# -*- test-case-name: tests.server.test_protocol -*-
"""Handlers of the requests a logged-in connection may send.

Split from :mod:`securechat.server.protocol` to keep modules small. Each handler takes
the factory (shared state), the caller's :class:`Session` and the decoded request, and
returns the reply (or None when the request has none). Refusals are raised as
:class:`RelayError` and become typed ``error`` replies in the protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from securechat import wire
from securechat.server import admin, keydir
from securechat.server.contacts import ContactGraph
from securechat.server.relay import Relay, RelayError, Session

if TYPE_CHECKING:
    from securechat.server.protocol import RelayFactory

log = Logger(namespace="securechat.server.handlers")


def send(f: RelayFactory, session: Session, msg: wire.Send) -> Deferred[wire.Message]:
    """Reply only once the accepted envelopes are committed (a Deferred, no coroutine:
    this is the hot path)."""
    return f.relay.send(session, msg.items).addCallback(_send_reply, msg.id)


def _send_reply(results: list[Any], rid: int) -> wire.Message:
    return wire.SendReply(id=rid, results=tuple(results))


async def ack(f: RelayFactory, session: Session, msg: wire.Ack) -> None:
    """Cumulative acknowledgement; no reply (the protocol calls :meth:`Relay.ack` directly)."""
    f.relay.ack(session, msg.up_to)


async def publish_prekeys(
    f: RelayFactory, session: Session, msg: wire.PublishPrekeys
) -> wire.Message:
    """Store this user's prekeys for one backend."""
    n = await keydir.publish_prekeys(f.relay, session, msg)
    return wire.PrekeysStored(id=msg.id, backend=msg.backend, one_time_count=n)


async def fetch_bundle(f: RelayFactory, session: Session, msg: wire.FetchBundle) -> wire.Message:
    """Someone's prekey bundle."""
    bundle = await keydir.fetch_bundle(f.relay, session, msg.user, msg.backend)
    return dataclasses.replace(bundle, id=msg.id)


async def who(f: RelayFactory, session: Session, msg: wire.Who) -> wire.Message:
    """Who is online, as far as policy lets this user see."""
    return wire.Online(id=msg.id, users=tuple(f.relay.who(session)))


_CONTACT_CHANGES = {
    wire.ContactRequest: ContactGraph.request,
    wire.ContactAccept: ContactGraph.accept,
    wire.ContactRemove: ContactGraph.remove,
}


async def contact_change(
    f: RelayFactory,
    session: Session,
    msg: wire.ContactRequest | wire.ContactAccept | wire.ContactRemove,
) -> wire.Message:
    """Ask for, accept or remove a contact; the reply is the relation's new state."""
    f.relay.charge(session)
    state = await _CONTACT_CHANGES[type(msg)](f.relay.graph, session, msg.user)
    return wire.ContactState(id=msg.id, user=msg.user, state=state)


async def contact_list(f: RelayFactory, session: Session, msg: wire.ContactList) -> wire.Message:
    """List contacts and pending requests."""
    found = await f.relay.graph.listing(session)
    return wire.Contacts(id=msg.id, contacts=found)


async def room_post(f: RelayFactory, session: Session, msg: wire.RoomPost) -> wire.Message:
    """A signed membership change (create, invite, join, leave, remove, promote, demote)."""
    f.relay.charge(session)
    await f.relay.directory.post(session, msg.room, msg.event, f.relay.graph.may_contact)
    return wire.Ok(id=msg.id)


async def room_sync(f: RelayFactory, session: Session, msg: wire.RoomSync) -> wire.Message:
    """A room's signed events after a sequence number."""
    events = await f.relay.directory.events_for(session, msg.room, msg.after)
    return wire.RoomEvents(id=msg.id, room=msg.room, events=events)


async def room_list(f: RelayFactory, session: Session, msg: wire.RoomList) -> wire.Message:
    """The rooms this user is in or invited to."""
    return wire.Rooms(id=msg.id, rooms=await f.relay.directory.rooms_of(session))


async def room_members(f: RelayFactory, session: Session, msg: wire.RoomMembers) -> wire.Message:
    """Members of a room this user is in."""
    members = await f.relay.directory.members_for(session, msg.room)
    return wire.Room(id=msg.id, room=msg.room, members=members)


async def _admin(f: RelayFactory, session: Session, what: str) -> Relay:
    if not await admin.is_admin(f.relay, session):
        log.warn("{user} tried {what} without admin role", user=session.user, what=what)
        raise RelayError(wire.E_NOT_PERMITTED, "administrators only")
    return f.relay


async def admin_list(f: RelayFactory, session: Session, msg: wire.AdminList) -> wire.Message:
    """All users with their role and whether they are online."""
    users = await admin.list_users(await _admin(f, session, "admin_list"))
    return wire.AdminUsers(id=msg.id, users=users)


async def admin_add_user(f: RelayFactory, session: Session, msg: wire.AdminAddUser) -> wire.Message:
    """Create an account."""
    relay = await _admin(f, session, "admin_add_user")
    await admin.add_user(relay, f.run_in_thread, msg.user, msg.role, msg.password,
                         f.hash_params)  # fmt: skip
    log.info("{admin} added {user}", admin=session.user, user=msg.user)
    return wire.Ok(id=msg.id)


async def admin_remove_user(
    f: RelayFactory, session: Session, msg: wire.AdminRemoveUser
) -> wire.Message:
    """Delete an account."""
    await admin.remove_user(await _admin(f, session, "admin_remove_user"), msg.user)
    log.info("{admin} removed {user}", admin=session.user, user=msg.user)
    return wire.Ok(id=msg.id)


async def admin_kick(f: RelayFactory, session: Session, msg: wire.AdminKick) -> wire.Message:
    """Disconnect a user."""
    admin.kick(await _admin(f, session, "admin_kick"), msg.user)
    log.info("{admin} kicked {user}", admin=session.user, user=msg.user)
    return wire.Ok(id=msg.id)


_Handler = Callable[[Any, Session, Any], Coroutine[Any, Any, wire.Message | None]]
_FastHandler = Callable[[Any, Session, Any], Deferred[wire.Message]]
#: ``type`` -> hot-path handlers that return a Deferred themselves (no coroutine).
FAST_HANDLERS: dict[str, _FastHandler] = {"send": send}
#: ``type`` -> handler for the other logged-in requests (``ack`` is handled inline by
#: the protocol; it is listed so that the protocol knows it as a request).
HANDLERS: dict[str, _Handler] = {
    "ack": ack,
    "publish_prekeys": publish_prekeys,
    "fetch_bundle": fetch_bundle,
    "who": who,
    "contact_request": contact_change,
    "contact_accept": contact_change,
    "contact_remove": contact_change,
    "contact_list": contact_list,
    "room_post": room_post,
    "room_sync": room_sync,
    "room_list": room_list,
    "room_members": room_members,
    "admin_list": admin_list,
    "admin_add_user": admin_add_user,
    "admin_remove_user": admin_remove_user,
    "admin_kick": admin_kick,
}
