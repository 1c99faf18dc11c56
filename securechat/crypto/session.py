"""The end-to-end session the client uses: handshake, ratchet and envelope in one object.

Life cycle (``docs/security.md`` has the protocol summary):

1. The responder publishes prekeys (:mod:`securechat.crypto.prekeys`).
2. :meth:`Session.initiate` runs the handshake against a fetched bundle; the initiator can
   encrypt at once. Its envelopes carry the handshake message in the header (``hs``, so that
   any of them can set the session up, as X3DH's "initial message" and libsignal's
   ``PreKeySignalMessage``) until the first reply from the peer decrypts.
3. The responder sees ``hs`` in a header from a peer it has no session with (or another
   ``hs`` than its session's), and calls :meth:`Session.respond`, which also decrypts that
   first envelope and reports which one-time prekey to delete.
4. :meth:`Session.encrypt` / :meth:`Session.decrypt` for everything after;
   :meth:`Session.to_bytes` / :meth:`Session.from_bytes` to persist (the bytes hold secrets:
   the keystore encrypts them at rest).

Decryption is all-or-nothing: a failure of any kind leaves the session exactly as it was
(Double Ratchet section 3.5). The header's sender, recipient and backend must match the
session, so a relay cannot re-address an envelope; the client also checks that the wire
message's routing fields equal the authenticated header it gets back.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import cbor2
from cryptography.hazmat.primitives import hashes

from securechat.crypto import envelope as env
from securechat.crypto.errors import (
    MalformedEnvelope,
    MalformedState,
    SessionMismatch,
)
from securechat.crypto.handshake import v2 as handshake
from securechat.crypto.header import HeaderDecoder
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import IKem, KeyPair
from securechat.crypto.prekeys import SignedPrekey
from securechat.crypto.ratchet import Ratchet, RatchetHeader

__all__ = ["Responded", "Session"]

#: 2 since handshake v2 and the message-id-keyed envelope; older saved sessions do not load.
_STATE_VERSION: Final = 2


def _digest(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


class Responded(NamedTuple):
    """What :meth:`Session.respond` gives (see there)."""

    session: Session
    header: env.Header
    plaintext: bytes
    consumed_one_time_prekey: int | None
    signed_prekey_id: int
    transcript_hash: bytes


class Session:
    """A pairwise end-to-end session with one peer over one backend."""

    def __init__(
        self,
        ratchet: Ratchet,
        *,
        local_user: str,
        peer_user: str,
        local_identity: bytes,
        peer_identity: bytes,
        handshake_message: bytes | None,
        handshake_digest: bytes,
        initiator: bool,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ratchet = ratchet
        self.local_user = local_user
        self.peer_user = peer_user
        self.local_identity = local_identity
        self.peer_identity = peer_identity
        #: Sent in every header until the peer's first reply decrypts (initiator only).
        self.handshake_message = handshake_message
        self.handshake_digest = handshake_digest
        self.initiator = initiator
        self.rng = rng
        self.clock = clock
        self._ad_out = env.identity_prefix(local_identity, peer_identity)
        self._ad_in = env.identity_prefix(peer_identity, local_identity)
        self._encoder: env.HeaderEncoder | None = None
        #: Recognises further headers of the chain of the last header that fully decoded and
        #: authenticated, so the per-message canonical-encoding check is not redone per message.
        self._decoder: HeaderDecoder | None = None

    @property
    def backend(self) -> str:
        """``name:params`` of this session's KEM."""
        return self.ratchet.backend

    @classmethod
    def initiate(
        cls,
        *,
        kem: IKem,
        identity: IdentityKeyPair,
        local_user: str,
        peer_user: str,
        peer_identity: bytes,
        signed_prekey: bytes,
        one_time_prekey: bytes | None = None,
        ratchet_keypair: KeyPair | None = None,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> Session:
        """Start a session from a fetched bundle (see :func:`handshake.initiate` for errors).

        :param peer_identity: the peer's identity key as pinned by the client.
        """
        result = handshake.initiate(
            kem, identity, peer_identity, signed_prekey, one_time_prekey, clock(), ratchet_keypair
        )
        return cls(
            Ratchet.initiator(kem, result.root_key, result.ratchet_keypair, clock),
            local_user=local_user,
            peer_user=peer_user,
            local_identity=identity.public_bytes(),
            peer_identity=peer_identity,
            handshake_message=result.message_bytes,
            handshake_digest=_digest(result.message_bytes),
            initiator=True,
            rng=rng,
            clock=clock,
        )

    @classmethod
    def respond(
        cls,
        envelope: bytes,
        *,
        kem: IKem,
        identity: IdentityKeyPair,
        identity_kem: KeyPair | None,
        local_user: str,
        find_signed_prekey: Callable[[int], tuple[SignedPrekey, KeyPair] | None],
        find_one_time_prekey: Callable[[int], KeyPair | None],
        replayed: Callable[[int, bytes], bool],
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
        grace: float = handshake.DEFAULT_GRACE,
    ) -> Responded:
        """Set up the responder's session from an envelope whose header carries ``hs``.

        :param identity_kem: our identity KEM key pair for ``kem``.
        :param replayed: the replay cache, ``(signed_prekey_id, transcript_hash) -> bool``.
        :returns: the session, the header and plaintext of the first envelope, the one-time
            prekey to delete (if not None), and the signed prekey id and transcript hash to
            add to that prekey's replay cache. Compare the session's ``peer_identity`` with
            the pinned key before showing the message.
        :raises SessionMismatch: the envelope carries no handshake.
        :raises HandshakeError: any handshake failure (see :func:`handshake.respond`).
        :raises CryptoError: any envelope failure, as in :meth:`decrypt`.
        """
        header, header_bytes, ciphertext = env.parse_envelope(envelope)
        if header.handshake is None:
            raise SessionMismatch("envelope does not start a session")
        if header.recipient != local_user:
            raise MalformedEnvelope("envelope is addressed to another user")
        result = handshake.respond(
            kem, identity, identity_kem, header.handshake, find_signed_prekey,
            find_one_time_prekey, replayed, clock(), grace,
        )  # fmt: skip
        session = cls(
            Ratchet.responder(kem, result.root_key, result.message.ratchet_pub, clock),
            local_user=local_user,
            peer_user=header.sender,
            local_identity=identity.public_bytes(),
            peer_identity=result.initiator_identity,
            handshake_message=None,
            handshake_digest=_digest(header.handshake),
            initiator=False,
            rng=rng,
            clock=clock,
        )
        plaintext = session._open(header, header_bytes, ciphertext)
        return Responded(
            session, header, plaintext, result.consumed_one_time_prekey,
            result.signed_prekey_id, result.transcript_hash,
        )  # fmt: skip

    def encrypt(
        self,
        plaintext: bytes,
        *,
        room: str | None = None,
        message_id: bytes | None = None,
        timestamp_ms: int | None = None,
    ) -> bytes:
        """Encrypt one message to the peer; returns the envelope bytes.

        :param message_id: 16 bytes; fresh random bytes when omitted.
        :raises ValueError: the plaintext exceeds :data:`envelope.MAX_PLAINTEXT`.
        """
        if len(plaintext) > env.MAX_PLAINTEXT:
            raise ValueError(f"plaintext larger than {env.MAX_PLAINTEXT} bytes")
        ratchet_header, message_key = self.ratchet.encrypt_step()
        key = (
            self.ratchet.backend,
            self.local_user,
            self.peer_user,
            ratchet_header.ratchet_pub,
            ratchet_header.kem_ct,
            ratchet_header.pn,
            self.handshake_message,
        )
        encoder = self._encoder
        if encoder is None or encoder.key != key:
            encoder = self._encoder = env.HeaderEncoder(*key)
        mid = message_id if message_id is not None else self.rng(env.MESSAGE_ID_SIZE)
        header_bytes = encoder.encode(
            ratchet_header.n,
            mid,
            timestamp_ms if timestamp_ms is not None else int(self.clock() * 1000),
            room,
        )
        return env.seal(message_key, mid, header_bytes, plaintext, self._ad_out)

    def decrypt(self, envelope: bytes) -> tuple[env.Header, bytes]:
        """Authenticate and decrypt one envelope from the peer.

        :returns: the authenticated header and the plaintext.
        :raises MalformedEnvelope: bad framing or header, or a header naming other users or
            another backend than this session's.
        :raises SessionMismatch: the header starts another session (call :meth:`respond`).
        :raises DuplicateMessage: already decrypted (drop it silently).
        :raises TooManySkipped: too far ahead of the last message received.
        :raises AuthenticationFailed: altered, forged or for another session.
        """
        header_bytes, ciphertext = env.split_envelope(envelope)
        decoder = self._decoder
        header = decoder.decode(header_bytes) if decoder is not None else None
        if header is not None:
            return header, self._open(header, header_bytes, ciphertext)
        header = env.decode_header(header_bytes)
        plaintext = self._open(header, header_bytes, ciphertext)
        self._decoder = HeaderDecoder(header)
        return header, plaintext

    def _open(self, header: env.Header, header_bytes: bytes, ciphertext: bytes) -> bytes:
        if (
            header.sender != self.peer_user
            or header.recipient != self.local_user
            or header.backend != self.ratchet.backend
        ):
            raise MalformedEnvelope("envelope names other users or another backend")
        if header.handshake is not None and (
            self.initiator or not hmac.compare_digest(
                _digest(header.handshake), self.handshake_digest
            )
        ):  # fmt: skip
            raise SessionMismatch("envelope belongs to another session with this peer")
        pending = self.ratchet.decrypt_step(
            RatchetHeader(header.ratchet_pub, header.kem_ct, header.pn, header.n)
        )
        plaintext = env.open_envelope(
            pending.message_key, header.message_id, header_bytes, ciphertext, self._ad_in
        )
        self.ratchet.commit(pending)
        if self.initiator:
            # The peer has answered, so it holds the session: stop repeating the handshake.
            self.handshake_message = None
        return plaintext

    def to_bytes(self) -> bytes:
        """The whole session as deterministic CBOR (secret: encrypt it at rest)."""
        obj: dict[str, Any] = {
            "v": _STATE_VERSION,
            "lu": self.local_user,
            "pu": self.peer_user,
            "li": self.local_identity,
            "pi": self.peer_identity,
            "hs": self.handshake_message,
            "hd": self.handshake_digest,
            "init": self.initiator,
            "r": self.ratchet.to_obj(),
        }
        return bytes(cbor2.dumps(obj, canonical=True))

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        kem_for: Callable[[str], IKem],
        *,
        rng: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.time,
    ) -> Session:
        """Load a session saved by :meth:`to_bytes`.

        :param kem_for: maps the stored backend name (``"ecdh:x25519"``) to its KEM.
        :raises MalformedState: the bytes are not a valid saved session.
        """
        try:
            obj = cbor2.loads(data)
            ratchet = Ratchet.from_obj(obj["r"], kem_for(obj["r"]["be"]), clock)
            fields = (obj["lu"], obj["pu"], obj["li"], obj["pi"], obj["hd"])
            if obj["v"] != _STATE_VERSION or not all(
                type(v) is t for v, t in zip(fields, (str, str, bytes, bytes, bytes), strict=True)
            ):
                raise MalformedState("saved session has bad fields")
            if obj["hs"] is not None and type(obj["hs"]) is not bytes:
                raise MalformedState("saved session has a bad handshake message")
            return cls(
                ratchet,
                local_user=obj["lu"],
                peer_user=obj["pu"],
                local_identity=obj["li"],
                peer_identity=obj["pi"],
                handshake_message=obj["hs"],
                handshake_digest=obj["hd"],
                initiator=obj["init"] is True,
                rng=rng,
                clock=clock,
            )
        except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, IndexError) as exc:
            raise MalformedState(f"bad saved session: {exc!r}") from None

    @staticmethod
    def peek(envelope: bytes) -> env.Header:
        """The *unauthenticated* header, to pick the session (or see ``hs``) before decrypting."""
        return env.parse_envelope(envelope)[0]
