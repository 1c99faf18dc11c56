# -*- test-case-name: tests.server.test_relay_social -*-
"""The key directory: publishing prekeys and handing out bundles.

Split from :mod:`securechat.server.relay` to keep modules small; policy comes from the
relay (allowed backends, rate, the ``contacts`` messaging policy).
"""

from __future__ import annotations

import hashlib

from securechat import wire
from securechat.errors import TooManyPrekeys
from securechat.server import prekeycheck
from securechat.server.relay import Relay, RelayError, Session

#: One-time prekeys kept per user and backend; a publish that would exceed it is refused
#: with ``too-large`` and stores nothing (a client tops up to a few hundred at most).
MAX_STORED_ONE_TIME = 1000


def check_backend(relay: Relay, backend: str) -> None:
    """Refuse backends the server does not allow."""
    if backend not in relay.config.crypto.backends:
        raise RelayError(wire.E_BACKEND_NOT_ALLOWED, f"backend {backend!r} is not allowed")


async def publish_prekeys(relay: Relay, session: Session, msg: wire.PublishPrekeys) -> int:
    """Store the session's prekeys; returns the one-time prekeys now available.

    Refused with ``too-large`` (and nothing stored) when the user would then hold more
    than :data:`MAX_STORED_ONE_TIME` one-time prekeys for the backend.
    """
    check_backend(relay, msg.backend)
    relay.charge(session)
    _check_records(msg)
    one_time = [(k.key_id, k.key) for k in msg.one_time]
    try:
        n = await relay.store.publish_prekeys(
            session.user, msg.backend, msg.signed_prekey, one_time, MAX_STORED_ONE_TIME
        )
    except TooManyPrekeys:
        message = f"at most {MAX_STORED_ONE_TIME} one-time prekeys are kept per backend"
        raise RelayError(wire.E_TOO_LARGE, message) from None
    if msg.identity_key is not None:
        await relay.store.set_identity_key(session.user, msg.identity_key)
        relay.identities.forget(session.user)
    return n


def _check_records(msg: wire.PublishPrekeys) -> None:
    """Refuse (``bad-request``, nothing stored) keys that are not what a client makes."""
    try:
        if msg.identity_key is not None:
            prekeycheck.check_identity_key(msg.identity_key)
        if msg.signed_prekey is not None:
            prekeycheck.check_signed_prekey(msg.backend, msg.signed_prekey)
        for k in msg.one_time:
            prekeycheck.check_one_time_prekey(msg.backend, k.key_id, k.key)
    except prekeycheck.BadKeyRecord as e:
        raise RelayError(wire.E_BAD_REQUEST, str(e)) from None


def _may_take_one_time(relay: Relay, session: Session, user: str, backend: str) -> bool:
    """Whether this bundle may carry one of ``user``'s one-time prekeys: each requester
    gets a few per owner and backend, then one per ``1/one_time_per_peer_rate`` seconds
    (one account could otherwise drain the whole pool and make the owner's client
    generate keys over and over). The bundle itself is never refused for it."""
    if user == session.user:
        return True
    key = hashlib.blake2b(
        f"{session.user}\0{user}\0{backend}".encode(), digest_size=16
    ).hexdigest()
    return relay.handouts.unlimited or relay.handouts.get(key).take(1)


async def fetch_bundle(relay: Relay, session: Session, user: str, backend: str) -> wire.Bundle:
    """Hand out ``user``'s bundle (each one-time prekey once, and a few per requester) and
    warn them when low."""
    check_backend(relay, backend)
    relay.charge(session)
    if await relay.store.get_user(user) is None:
        raise RelayError(wire.E_NO_SUCH_USER, "no such user")
    if relay.contacts_only and user != session.user and not await related(relay, session, user):
        raise RelayError(wire.E_NOT_PERMITTED, "not a contact and no common room")
    take = _may_take_one_time(relay, session, user, backend)
    bundle = await relay.store.fetch_bundle(user, backend, take)
    if bundle is None:
        raise RelayError(wire.E_NO_BUNDLE, f"{user} has published no keys for {backend}")
    if bundle.one_time_prekey is not None:
        remaining = await relay.store.count_one_time_prekeys(user, backend)
        relay.maybe_low(remaining, user, backend)
    return wire.Bundle(
        id=0,
        user=bundle.user,
        backend=bundle.backend,
        identity_key=bundle.identity_key,
        signed_prekey=bundle.signed_prekey,
        one_time_id=bundle.one_time_prekey_id,
        one_time_key=bundle.one_time_prekey,
    )


async def related(relay: Relay, session: Session, peer: str) -> bool:
    """An accepted contact, or a member of one of the session's rooms."""
    if await relay.graph.may_contact(session, peer):
        return True
    return await relay.directory.shares_room(session.user, peer)
