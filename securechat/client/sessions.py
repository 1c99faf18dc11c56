"""End-to-end state of one client: pinned identities and pairwise sessions.

With :mod:`securechat.client.prekeys` (the keys we publish), this is the only client code
that touches :mod:`securechat.crypto`. It keeps every secret inside the
:class:`~securechat.client.keystore.Keystore` (encrypted at rest) and decides trust: the
first identity key seen for a peer is pinned (TOFU); a different key later is reported, and
a peer the user verified is blocked until verified again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cbor2

from securechat.client.keystore import Keystore, Pin
from securechat.client.prekeys import PrekeyStore
from securechat.crypto import envelope as env
from securechat.crypto.backends import DEFAULT_BACKEND
from securechat.crypto.errors import CryptoError, DuplicateMessage
from securechat.crypto.header import PROTOCOL_VERSION
from securechat.crypto.identity import (
    IdentityKeyPair,
    fingerprint,
    format_safety_number,
    safety_number,
)
from securechat.crypto.kem import IKem, KemError, kem_for_id
from securechat.crypto.prekeys import SignedPrekey
from securechat.crypto.session import Session

__all__ = ["DEFAULT_BACKEND", "Received", "SessionManager", "TrustError", "kem_for"]


class TrustError(Exception):
    """Sending is blocked: the peer's verified identity key changed."""

    #: Set when the key change was noticed by the call that raised (show it as a warning).
    warning: str | None = None


class NoSession(CryptoError):
    """No session opens this message (the sender's state and ours diverged, e.g. we lost
    ours): answered by a could-not-decrypt receipt, which starts a new session."""


@dataclass(frozen=True)
class Received:
    """One decrypted message, ready to show."""

    sender: str
    text: str
    room: str | None
    message_id: bytes
    timestamp: float
    verified: bool
    missing: int
    #: Set for a receipt (then ``text`` is empty): ``(status, message ids)``.
    receipt: tuple[str, tuple[bytes, ...]] | None = None


#: Receipt statuses: the peer decrypted and stored the messages, or could not decrypt them.
RECEIPT_RECEIVED = "received"
RECEIPT_FAILED = "failed"
#: Message ids one receipt may name (receipts are batched per delivery).
MAX_RECEIPT_IDS = 256


def kem_for(backend_id: str) -> IKem:
    """Build the KEM named by a header's ``name:params`` string (``"dh:ffdhe2048"``).

    :raises CryptoError: a backend or parameter set this client does not have.
    """
    try:
        return kem_for_id(backend_id)
    except (KeyError, KemError):
        raise CryptoError(f"unknown backend {backend_id!r}") from None


def encode_plaintext(text: str) -> bytes:
    """The inner message format: a CBOR map, so receipts or files can be added later."""
    return bytes(cbor2.dumps({"k": "text", "text": text}, canonical=True))


def encode_receipt(status: str, ids: tuple[bytes, ...]) -> bytes:
    """A receipt's inner content: only the status and the message ids it answers (never
    any plaintext), in one small envelope like any message."""
    return bytes(cbor2.dumps({"k": "receipt", "s": status, "ids": list(ids)}, canonical=True))


def decode_plaintext(data: bytes) -> str:
    obj = cbor2.loads(data)
    if not isinstance(obj, dict) or obj.get("k") != "text" or not isinstance(obj.get("text"), str):
        raise CryptoError("unsupported message content")
    return str(obj["text"])


def decode_content(data: bytes) -> tuple[str, tuple[str, tuple[bytes, ...]] | None]:
    """``(text, None)`` for a message, ``("", (status, ids))`` for a receipt.

    :raises CryptoError: anything else, or a receipt that is not well formed.
    """
    try:
        obj = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError) as e:
        raise CryptoError("malformed message content") from e
    if isinstance(obj, dict) and obj.get("k") == "receipt":
        status, ids = obj.get("s"), obj.get("ids")
        if (
            status not in (RECEIPT_RECEIVED, RECEIPT_FAILED)
            or not isinstance(ids, list)
            or not 0 < len(ids) <= MAX_RECEIPT_IDS
            or not all(isinstance(i, bytes) and len(i) == env.MESSAGE_ID_SIZE for i in ids)
        ):
            raise CryptoError("malformed receipt")
        return "", (str(status), tuple(bytes(i) for i in ids))
    return decode_plaintext(data), None


class SessionManager:
    """Owns the identity, prekeys, pins and sessions stored in one keystore."""

    def __init__(self, keystore: Keystore, clock: Callable[[], float] = time.time) -> None:
        self.keystore = keystore
        self.state = keystore.state
        self.user = keystore.state.user
        self.identity = IdentityKeyPair.from_private_bytes(keystore.state.identity_private)
        self.clock = clock
        self._kems: dict[str, IKem] = {}
        #: The keys we publish: signed, one-time and identity KEM prekeys, replay caches.
        self.prekeys = PrekeyStore(keystore.state, self.identity, clock, self._kems)
        self._migrate()

    def _migrate(self) -> None:
        """Sessions saved before protocol v2 (handshake v2, message-id-keyed envelopes) cannot
        go on: they are dropped and the next message starts a v2 session. Old signed prekeys
        are replaced at the next publish (:meth:`PrekeyStore.to_publish`)."""
        if self.state.counters.get("protocol", 1) >= PROTOCOL_VERSION:
            return
        self.state.sessions.clear()
        for name in ("archive", "chains"):
            self.state.extra.pop(name, None)
        self.state.counters["protocol"] = PROTOCOL_VERSION

    def _kem(self, backend_id: str) -> IKem:
        if backend_id not in self._kems:
            self._kems[backend_id] = kem_for(backend_id)
        return self._kems[backend_id]

    # -- trust ---------------------------------------------------------------------
    def observe_identity(self, peer: str, key: bytes) -> str | None:
        """Pin ``key`` on first contact; returns a warning text if it differs from the pin.

        A *verified* pin is never replaced by what arrives over the network: the new key is
        held as pending and sending is blocked until the user verifies and trusts it, so a
        relay forging one handshake cannot take the conversation over (or wreck it).
        """
        pin = self.state.pins.get(peer)
        if pin is None:
            self.state.pins[peer] = Pin(key)
            return None
        if env.constant_time_equal(pin.identity_key, key):
            return None
        pending = self.state.extra.get(f"pending:{peer}")
        if pin.verified or self.state.extra.get(f"blocked:{peer}"):
            self.state.extra[f"blocked:{peer}"] = True
            self.state.extra[f"pending:{peer}"] = key
            if pending is not None and env.constant_time_equal(pending, key):
                return None  # already reported
            return (
                f"the identity key of {peer} has changed: sending is blocked until you "
                f"/verify {peer} and /trust {peer} again"
            )
        self.state.pins[peer] = Pin(key, verified=False, changed_from=pin.identity_key)
        self._drop_sessions(peer)
        return f"the identity key of {peer} has changed"

    def _drop_sessions(self, peer: str) -> None:
        """Sessions made with an old key must not be used to send any more."""
        archive = self._archive()
        for name in [k for k in self.state.sessions if k.startswith(f"{peer}|")]:
            del self.state.sessions[name]
            archive.pop(name, None)

    def _quarantine(self, peer: str, key: bytes) -> str | None:
        """Hold back a message from a *verified* peer that arrived under another identity key.

        Nothing of it is shown, remembered or installed: the verified session stays the one
        we send with, the message id is not marked seen (a forgery cannot shadow a real
        message) and the chain does not count for "missing" notices. The key becomes the one
        ``/verify`` shows, so the user can compare it, and ``/trust`` it if it really is the
        peer's new key; sending to the verified key goes on meanwhile.

        :returns: the warning to show, or ``None`` when ``key`` is acceptable.
        """
        pin = self.state.pins.get(peer)
        if pin is None or not pin.verified or env.constant_time_equal(pin.identity_key, key):
            return None
        self.state.extra[f"pending:{peer}"] = key
        return (
            f"a message claiming to be from {peer} arrived under a new, unverified key; "
            f"/verify {peer} shows it"
        )

    def check_can_send(self, peer: str) -> None:
        if self.state.extra.get(f"blocked:{peer}"):
            raise TrustError(
                f"{peer}'s verified identity key changed: /verify {peer}, then /trust {peer}"
            )

    def _key_to_verify(self, peer: str) -> bytes:
        pending = self.state.extra.get(f"pending:{peer}")
        if pending is not None:
            return bytes(pending)
        pin = self.state.pins.get(peer)
        if pin is None:
            raise KeyError(peer)
        return pin.identity_key

    def trust(self, peer: str) -> None:
        """Mark the key the user last saw with ``/verify`` as verified, and lift a block.

        :raises TrustError: the key changed since (or was never shown): verify again.
        """
        key = self._key_to_verify(peer)
        shown = self.state.extra.get(f"shown:{peer}")
        if shown is None or not env.constant_time_equal(bytes(shown), key):
            raise TrustError(f"{peer}'s key is not the one last shown: /verify {peer} first")
        old = self.state.pins.get(peer)
        if old is not None and not env.constant_time_equal(old.identity_key, key):
            self._drop_sessions(peer)
        self.state.pins[peer] = Pin(key, verified=True)
        for flag in ("blocked", "pending", "shown"):
            self.state.extra.pop(f"{flag}:{peer}", None)

    def is_verified(self, peer: str) -> bool:
        """True if the user verified ``peer``'s key and no other key has turned up since."""
        pin = self.state.pins.get(peer)
        return pin is not None and pin.verified and f"pending:{peer}" not in self.state.extra

    def verify_info(self, peer: str) -> dict[str, Any]:
        """Safety number and fingerprints to compare out of band (of the pending key, when
        a verified peer's key changed); remembers which key was shown, for ``/trust``."""
        key = self._key_to_verify(peer)
        self.state.extra[f"shown:{peer}"] = key
        current = self.state.pins.get(peer)
        pin = Pin(
            key, verified=self.is_verified(peer) and f"pending:{peer}" not in self.state.extra
        )
        own = self.identity.public_bytes()
        return {
            "user": peer,
            "safety_number": format_safety_number(
                safety_number(own, self.user, pin.identity_key, peer)
            ),
            "fingerprint": fingerprint(pin.identity_key),
            "own_fingerprint": fingerprint(own),
            "verified": pin.verified,
            "pinned_fingerprint": (
                fingerprint(current.identity_key)
                if current is not None and not env.constant_time_equal(current.identity_key, key)
                else None
            ),
        }

    # -- sessions ------------------------------------------------------------------
    def _session_key(self, peer: str, bid: str) -> str:
        return f"{peer}|{bid}"

    def active_session(self, peer: str, backend: str) -> Session | None:
        """Our session with ``peer`` over backend ``name`` (any parameters), if any."""
        pin = self.state.pins.get(peer)
        for key, blob in self.state.sessions.items():
            p, _, bid = key.partition("|")
            if p == peer and bid.split(":")[0] == backend:
                session = Session.from_bytes(blob, self._kem, clock=self.clock)
                if pin is not None and env.constant_time_equal(session.peer_identity,
                                                               pin.identity_key):  # fmt: skip
                    return session
        return None

    def start_session(
        self,
        peer: str,
        identity_key: bytes,
        signed_prekey: bytes,
        one_time: bytes | None,
    ) -> tuple[Session, str | None]:
        """Run the handshake against a fetched bundle (after checking the pin)."""
        warning = self.observe_identity(peer, identity_key)
        try:
            self.check_can_send(peer)
        except TrustError as e:
            e.warning = warning  # the key change itself must still be shown
            raise
        record = SignedPrekey.from_bytes(signed_prekey)
        session = Session.initiate(
            kem=self._kem(record.backend), identity=self.identity, local_user=self.user,
            peer_user=peer, peer_identity=identity_key, signed_prekey=signed_prekey,
            one_time_prekey=one_time, clock=self.clock,
        )  # fmt: skip
        key = self._session_key(peer, session.backend)
        previous = self.state.sessions.get(key)
        if previous is not None:
            archive = self._archive().setdefault(key, [])
            archive.insert(0, previous)
            del archive[self.ARCHIVE_SIZE :]
        self.save_session(session)
        return session, warning

    def save_session(self, session: Session) -> None:
        self.state.sessions[self._session_key(session.peer_user, session.backend)] = (
            session.to_bytes()
        )

    def encrypt(
        self,
        session: Session,
        text: str,
        room: str | None,
        message_id: bytes | None = None,
        content: bytes | None = None,
    ) -> tuple[bytes, bytes]:
        """Encrypt; returns ``(message_id, envelope)``. The caller saves the keystore
        before the envelope leaves, so a message key is never used twice after a crash.

        :param message_id: the id chosen when the message was typed (kept across a resend
            under a new session, so the peer drops a second copy); random if ``None``.
        """
        if message_id is None:
            message_id = os.urandom(env.MESSAGE_ID_SIZE)
        if content is None:
            content = encode_plaintext(text)
        envelope = session.encrypt(content, room=room, message_id=message_id)
        self.save_session(session)
        return message_id, envelope

    def decrypt(
        self, sender: str, backend: str, message_id: bytes, room: str | None, payload: bytes
    ) -> tuple[Received | None, list[str]]:
        """Decrypt one delivered envelope.

        :returns: the message (``None`` for a duplicate) and warnings to show.
        :raises CryptoError: the envelope cannot be accepted (shown as a warning by the caller).
        """
        header = Session.peek(payload)
        if (
            header.sender != sender
            or header.recipient != self.user
            or header.message_id != message_id
            or header.backend.split(":")[0] != backend
            or header.room != room
        ):
            raise CryptoError(
                f"the relay's routing fields disagree with the envelope from {sender}"
            )
        warnings: list[str] = []
        if self.keystore.seen_before(sender, message_id):
            return None, warnings  # a duplicate or a replay: never touch session state
        key = self._session_key(sender, header.backend)
        session, plaintext, archived_at = self._try_sessions(key, payload)
        fresh = session is None
        if session is None:
            if header.handshake is None:
                raise NoSession(f"no session with {sender} for this message")
            bid, keys = header.backend, self.prekeys
            done = Session.respond(
                payload, kem=self._kem(bid), identity=self.identity,
                identity_kem=keys.identity_kem(bid), local_user=self.user,
                find_signed_prekey=keys.find_signed(bid),
                find_one_time_prekey=keys.find_one_time(bid), replayed=keys.replayed(bid),
                clock=self.clock,
            )  # fmt: skip
            session, plaintext = done.session, done.plaintext
        quarantined = self._quarantine(sender, session.peer_identity)
        if quarantined is not None:
            return None, [quarantined]
        if fresh:
            # Only now is the first message accepted: its one-time prekey is used up and its
            # transcript joins the replay cache (a quarantined one changes nothing).
            keys.accepted(bid, done.consumed_one_time_prekey, done.signed_prekey_id,
                          done.transcript_hash)  # fmt: skip
            warning = self.observe_identity(sender, session.peer_identity)
            if warning:
                warnings.append(warning)
        self._install(key, session, archived_at, fresh)
        if not self.keystore.remember(sender, message_id):
            return None, warnings
        assert plaintext is not None
        missing = self._gap(sender, header)
        text, receipt = decode_content(plaintext)
        pin = self.state.pins.get(sender)
        verified = (
            pin is not None and pin.verified
            and env.constant_time_equal(pin.identity_key, session.peer_identity)
        )  # fmt: skip
        return (
            Received(sender, text, room, message_id, header.timestamp / 1000.0, verified,
                     missing, receipt),
            warnings,
        )  # fmt: skip

    # -- the per-peer session record (libsignal keeps previous states the same way) -----
    #: Earlier sessions kept per peer and backend, so that two users who started sessions
    #: with each other at the same moment (or a restarted peer) still converge.
    ARCHIVE_SIZE = 4

    def _archive(self) -> dict[str, list[bytes]]:
        archive: dict[str, list[bytes]] = self.state.extra.setdefault("archive", {})
        return archive

    def _try_sessions(
        self, key: str, payload: bytes
    ) -> tuple[Session | None, bytes | None, int | None]:
        """Decrypt with the current session, else an archived one (all-or-nothing each).

        :returns: the session that opened it, the plaintext, and its archive index (None
            for the current session); ``(None, None, None)`` when none could.
        :raises DuplicateMessage: a session had already decrypted this message.
        """
        current = self.state.sessions.get(key)
        candidates = ([(None, current)] if current is not None else []) + list(
            enumerate(self._archive().get(key, []))
        )
        for index, blob in candidates:
            session = Session.from_bytes(blob, self._kem, clock=self.clock)
            try:
                _, plaintext = session.decrypt(payload)
            except DuplicateMessage:
                raise
            except CryptoError:
                continue
            return session, plaintext, index
        return None, None, None

    def _install(self, key: str, session: Session, archived_at: int | None, fresh: bool) -> None:
        """Make ``session`` the one we send with; a replaced current one joins the archive.

        :param archived_at: index of ``session`` in the archive if it came from there.
        :param fresh: ``session`` was just set up by ``respond`` (not the current one).
        """
        archive = self._archive().setdefault(key, [])
        previous = self.state.sessions.get(key)
        if archived_at is not None:
            del archive[archived_at]
        if previous is not None and (archived_at is not None or fresh):
            archive.insert(0, previous)
        del archive[self.ARCHIVE_SIZE :]
        self.state.sessions[key] = session.to_bytes()

    def _gap(self, peer: str, header: env.Header) -> int:
        """Messages skipped in the peer's sending chain since the last one we saw."""
        chains: dict[str, Any] = self.state.extra.setdefault("chains", {})
        last = chains.get(peer)
        missing = 0
        if last is not None:
            last_pub, last_n = last
            if header.ratchet_pub == last_pub:
                missing = max(0, header.n - last_n - 1)
            else:
                missing = max(0, header.pn - last_n - 1) + header.n
        if last is None or header.ratchet_pub != last[0] or header.n > last[1]:
            chains[peer] = [header.ratchet_pub, header.n]
        return missing

