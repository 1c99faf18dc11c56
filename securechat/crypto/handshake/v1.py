"""Handshake v1 (superseded): asynchronous session set-up over a KEM, X3DH with encapsulations.

**Clients no longer accept it** (protocol v2 refuses v1 messages with a clear error; see
``v2.py`` and docs/security.md): its root key does not depend on the responder's long-term
identity (a leaked signed-prekey private key alone opens a first message) nor on the
transcript, and first messages without a one-time prekey can be replayed. It stays here, next
to v2, as the record of what v1 was and for the tests that show those weaknesses.

Followed: X3DH (signal.org/docs/specifications/x3dh, revision 1), sections 3.2-3.4, and the
KEM use of PQXDH (signal.org/docs/specifications/pqxdh) section 3.

* The initiator verifies the signed prekey against the *pinned* identity key and aborts on any
  failure (X3DH 3.3), then encapsulates to the signed prekey and, if the bundle had one, to the
  one-time prekey: ``(ss_spk, ek)``, ``(ss_opk, eo)``. These play the roles of DH3 and DH4 (the
  forward-secret parts).
* Root key, X3DH's ``KDF``: HKDF-SHA256 (RFC 5869) with salt = 32 zero bytes, IKM =
  ``0xFF * 32 || ss_spk [|| ss_opk]`` (the 0xFF prefix is X3DH's domain separator) and info =
  ``b"securechat-v1 handshake " || backend``, 32 bytes.
* Authentication. DH1 = DH(IK_A, SPK_B) and DH2 = DH(EK_A, IK_B) have no KEM analogue with
  Ed25519 identity keys, so the initiator instead *signs the transcript* (both identity keys,
  the backend, the prekey ids and public keys, every encapsulation and its first ratchet
  key) with its identity key; only the responder can decapsulate, which authenticates the
  responder implicitly. Both identity keys are also bound as AEAD associated data of every
  envelope (X3DH 3.3, ``AD = IK_A || IK_B``). Consequence: unlike X3DH, the initiator's
  signature is transferable evidence that it started a session with this responder (no
  deniability for the initiator), stated in ``docs/security.md``.
* Replays: a message using a one-time prekey fails the second time (:class:`UnknownPrekey`,
  the responder deletes that key); one without is replayable (X3DH 4.2), but the ratchet's
  first turn by the responder brings fresh randomness, so nothing readable comes of it.

Handshake message (deterministic CBOR, RFC 8949 section 4.2.1)::

    {"v": 1, "be": text, "ik": IK_A, "spk": uint, ["opk": uint,] "ek": bytes, ["eo": bytes,]
     "rp": bytes, "sig": bytes}

and the signed transcript is ``b"securechat-v1 handshake transcript\\x00" || CBOR(...)`` over
the same map without ``sig`` plus ``"ikb": IK_B``, ``"spkp"``/``"opkp"``: the prekey public keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securechat.crypto.envelope import backend_id
from securechat.crypto.errors import (
    BackendMismatch,
    BadPrekeySignature,
    BadTranscriptSignature,
    ExpiredPrekey,
    MalformedHandshake,
    MalformedPrekey,
    UnknownPrekey,
)
from securechat.crypto.identity import IdentityKeyPair, SignatureError, verify
from securechat.crypto.kem import IKem, KemError, KeyPair
from securechat.crypto.prekeys import (
    SIGNED_PREKEY_GRACE,
    OneTimePrekey,
    SignedPrekey,
    check_backend,
)

__all__ = [
    "HANDSHAKE_VERSION",
    "BackendMismatch",
    "BadPrekeySignature",
    "BadTranscriptSignature",
    "ExpiredPrekey",
    "HandshakeMessage",
    "InitiatorResult",
    "ResponderResult",
    "UnknownPrekey",
    "derive_root_key",
    "initiate",
    "respond",
]

HANDSHAKE_VERSION: Final = 1
DEFAULT_GRACE: Final = SIGNED_PREKEY_GRACE
_TRANSCRIPT_LABEL: Final = b"securechat-v1 handshake transcript\x00"
_ROOT_INFO: Final = b"securechat-v1 handshake "
_KDF_PREFIX: Final = b"\xff" * 32
_MAX_MESSAGE: Final = 8192
_MAX_FIELD: Final = 2048
_REQUIRED: Final = frozenset({"v", "be", "ik", "spk", "ek", "rp", "sig"})


def derive_root_key(kem: IKem, ss_spk: bytes, ss_opk: bytes | None) -> bytes:
    """X3DH ``KDF`` over the KEM secrets (see the module docstring)."""
    ikm = _KDF_PREFIX + ss_spk + (ss_opk or b"")
    info = _ROOT_INFO + backend_id(kem).encode("utf-8")
    return HKDF(hashes.SHA256(), 32, bytes(32), info).derive(ikm)


@dataclass(frozen=True, slots=True)
class HandshakeMessage:
    """The initial message: everything the responder needs besides its own keys."""

    backend: str
    initiator_identity: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    spk_ct: bytes
    opk_ct: bytes | None
    ratchet_pub: bytes
    signature: bytes = b""

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "v": HANDSHAKE_VERSION,
            "be": self.backend,
            "ik": self.initiator_identity,
            "spk": self.signed_prekey_id,
            "ek": self.spk_ct,
            "rp": self.ratchet_pub,
        }
        if self.one_time_prekey_id is not None:
            fields["opk"] = self.one_time_prekey_id
        if self.opk_ct is not None:
            fields["eo"] = self.opk_ct
        return fields

    def transcript(
        self, responder_identity: bytes, spk_public: bytes, opk_public: bytes | None
    ) -> bytes:
        """The bytes the initiator signs: this message (minus the signature) and the context."""
        fields = self._fields()
        fields["ikb"] = responder_identity
        fields["spkp"] = spk_public
        if opk_public is not None:
            fields["opkp"] = opk_public
        return _TRANSCRIPT_LABEL + bytes(cbor2.dumps(fields, canonical=True))

    def to_bytes(self) -> bytes:
        """Deterministic CBOR of the message."""
        return bytes(cbor2.dumps({**self._fields(), "sig": self.signature}, canonical=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> HandshakeMessage:
        """Strictly parse a handshake message.

        :raises MalformedHandshake: for anything but the deterministic encoding of a valid map.
        """
        if len(data) > _MAX_MESSAGE:
            raise MalformedHandshake("handshake message too large")
        try:
            obj = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise MalformedHandshake(f"handshake is not CBOR: {exc}") from None
        if not isinstance(obj, dict) or not (_REQUIRED <= obj.keys() <= _REQUIRED | {"opk", "eo"}):
            raise MalformedHandshake("handshake has missing or unknown fields")
        if ("opk" in obj) != ("eo" in obj) or obj["v"] != HANDSHAKE_VERSION:
            raise MalformedHandshake("unsupported version or half a one-time prekey")
        for key in ("spk", "opk"):
            value = obj.get(key, 0)
            if type(value) is not int or not 0 <= value < 2**32:
                raise MalformedHandshake(f"handshake field {key!r} must be a 32-bit id")
        for key in ("ik", "ek", "eo", "rp", "sig"):
            value = obj.get(key, b"x")
            if type(value) is not bytes or not 0 < len(value) <= _MAX_FIELD:
                raise MalformedHandshake(f"handshake field {key!r} must be non-empty bytes")
        if type(obj["be"]) is not str or not 0 < len(obj["be"]) <= 64:
            raise MalformedHandshake("handshake backend must be a short string")
        if bytes(cbor2.dumps(obj, canonical=True)) != data:
            raise MalformedHandshake("handshake is not in deterministic CBOR encoding")
        return cls(
            obj["be"],
            obj["ik"],
            obj["spk"],
            obj.get("opk"),
            obj["ek"],
            obj.get("eo"),
            obj["rp"],
            obj["sig"],
        )


@dataclass(frozen=True, slots=True)
class InitiatorResult:
    """What :func:`initiate` gives: the root key, the message to send, the ratchet key pair."""

    root_key: bytes
    message: HandshakeMessage
    message_bytes: bytes
    ratchet_keypair: KeyPair


@dataclass(frozen=True, slots=True)
class ResponderResult:
    """What :func:`respond` gives.

    ``consumed_one_time_prekey`` is the id of the one-time prekey this handshake used: the
    caller deletes its private key once the first message has decrypted (X3DH 3.4), so that
    a replay of the same handshake fails with :class:`UnknownPrekey`.
    """

    root_key: bytes
    message: HandshakeMessage
    initiator_identity: bytes
    consumed_one_time_prekey: int | None


def initiate(
    kem: IKem,
    identity: IdentityKeyPair,
    peer_identity: bytes,
    signed_prekey: bytes,
    one_time_prekey: bytes | None,
    now: float,
    ratchet_keypair: KeyPair | None = None,
) -> InitiatorResult:
    """Run the initiator's side against a fetched bundle.

    :param peer_identity: the responder's identity key *as pinned by the caller*, never the
        one the relay sent along unchecked.
    :param ratchet_keypair: the first ratchet key pair; made here when omitted (pass one from
        a pool for RSA, whose key generation is slow).
    :raises BadPrekeySignature, BackendMismatch, ExpiredPrekey: see
        :meth:`SignedPrekey.verify`; :class:`MalformedPrekey` for an unparsable blob.
    """
    spk = SignedPrekey.from_bytes(signed_prekey)
    spk.verify(peer_identity, kem, now, check_key=False)
    opk = None
    if one_time_prekey is not None:
        opk = OneTimePrekey.from_bytes(one_time_prekey)
        check_backend(opk.backend, kem)
    try:  # encapsulation validates each public key (the IKem contract)
        ss_spk, spk_ct = kem.encapsulate(spk.public)
        ss_opk, opk_ct = kem.encapsulate(opk.public) if opk is not None else (None, None)
    except KemError as exc:
        raise MalformedPrekey(f"prekey public key refused: {exc}") from None
    keypair = ratchet_keypair or kem.generate_keypair()
    unsigned = HandshakeMessage(
        backend=backend_id(kem),
        initiator_identity=identity.public_bytes(),
        signed_prekey_id=spk.key_id,
        one_time_prekey_id=opk.key_id if opk is not None else None,
        spk_ct=spk_ct,
        opk_ct=opk_ct,
        ratchet_pub=keypair.public,
    )
    transcript = unsigned.transcript(
        peer_identity, spk.public, opk.public if opk is not None else None
    )
    message = replace(unsigned, signature=identity.sign(transcript))
    return InitiatorResult(
        derive_root_key(kem, ss_spk, ss_opk), message, message.to_bytes(), keypair
    )


def respond(
    kem: IKem,
    identity: IdentityKeyPair,
    message_bytes: bytes,
    find_signed_prekey: Callable[[int], tuple[SignedPrekey, KeyPair] | None],
    find_one_time_prekey: Callable[[int], KeyPair | None],
    now: float,
    grace: float = DEFAULT_GRACE,
) -> ResponderResult:
    """Run the responder's side on a received handshake message.

    :param find_signed_prekey: our signed prekey record and key pair by id, or None.
    :param find_one_time_prekey: our one-time prekey pair by id, or None (unknown or used).
    :raises MalformedHandshake: unparsable message, or unusable encapsulation or ratchet key.
    :raises BackendMismatch: the message or the prekey is for another backend than ``kem``.
    :raises UnknownPrekey: a prekey id we do not hold (never issued, or already used).
    :raises BadTranscriptSignature: the initiator's signature does not verify.
    :raises ExpiredPrekey: our signed prekey expired more than ``grace`` seconds ago.
    """
    message = HandshakeMessage.from_bytes(message_bytes)
    check_backend(message.backend, kem)
    found = find_signed_prekey(message.signed_prekey_id)
    if found is None:
        raise UnknownPrekey(f"unknown signed prekey {message.signed_prekey_id}")
    spk, spk_pair = found
    check_backend(spk.backend, kem)
    opk_pair = None
    if message.one_time_prekey_id is not None:
        opk_pair = find_one_time_prekey(message.one_time_prekey_id)
        if opk_pair is None:
            raise UnknownPrekey(f"unknown or used one-time prekey {message.one_time_prekey_id}")
    transcript = message.transcript(
        identity.public_bytes(), spk.public, opk_pair.public if opk_pair is not None else None
    )
    try:
        verify(message.initiator_identity, transcript, message.signature)
    except SignatureError:
        raise BadTranscriptSignature("handshake transcript signature does not verify") from None
    if now >= spk.expires + grace:
        raise ExpiredPrekey(f"signed prekey {spk.key_id} expired at {spk.expires}")
    try:
        kem.validate_public(message.ratchet_pub)
        ss_spk = kem.decapsulate(spk_pair.private, message.spk_ct)
        ss_opk = None
        if opk_pair is not None and message.opk_ct is not None:
            ss_opk = kem.decapsulate(opk_pair.private, message.opk_ct)
    except KemError as exc:
        raise MalformedHandshake(f"unusable encapsulation or ratchet key: {exc}") from None
    return ResponderResult(
        derive_root_key(kem, ss_spk, ss_opk),
        message,
        message.initiator_identity,
        message.one_time_prekey_id,
    )
