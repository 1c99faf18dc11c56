"""Handshake v2: asynchronous session set-up over a KEM, with the responder's identity in the key.

Followed: PQXDH (signal.org/docs/specifications/pqxdh, revision 3) and X3DH
(signal.org/docs/specifications/x3dh, revision 1) with KEM encapsulations in place of every
DH, and the HPKE key schedule's binding of a context to the secret (RFC 9180 section 5.1).

What changed from v1 (``v1.py`` next to this file) and why:

* **The responder's long-term identity takes part in the key.** Each user publishes, inside
  the signed-prekey record, a long-term *identity KEM* public key per backend (``ikem``,
  signed by the Ed25519 identity key; :mod:`securechat.crypto.prekeys`). The initiator
  encapsulates to it in every handshake, as X3DH's ``DH2 = DH(EK_A, IK_B)`` and PQXDH use
  ``IK_B``. In v1 the signed prekey's private key alone (medium-term, kept ~44 days)
  sufficed to open a first message and answer as its owner; now the identity KEM private key,
  which never leaves the owner's keystore, is needed as well.
* **The root key is bound to the transcript.** ``TH = SHA-256(label || CBOR(transcript))``
  where the transcript names the version, the backend, both Ed25519 identity keys, the
  identity KEM key, the prekey ids and public keys, every encapsulation and the initiator's
  first ratchet key (:class:`Transcript`). The root key is
  ``HKDF-SHA256(salt = 0^32, IKM = 0xFF^32 || ss_ik || ss_spk [|| ss_opk],
  info = "securechat-v2 root key\\0" || TH)``, 32 bytes (X3DH's ``KDF`` with PQXDH's
  secret ordering, and the transcript in ``info`` as TLS 1.3's ``Derive-Secret``). Two
  parties that disagree on any transcript field derive unrelated keys.
* **Initiator authentication** is, as in v1, an Ed25519 signature by the initiator's identity
  key over ``"securechat-v2 handshake signature\\0" || TH`` (X3DH's ``DH1`` has no KEM
  analogue with Ed25519 identity keys). This makes the initiator's signature transferable
  evidence that it started a session (no deniability for the initiator): docs/security.md.
* **Replays of a first message are refused** for the whole life of the signed prekey it used:
  :func:`respond` asks the caller's replay cache, keyed by that prekey, before any
  decapsulation (the caller records ``TH`` once the first envelope decrypted and deletes the
  cache with the prekey). v1 refused only replays of messages with a one-time prekey.

Handshake message (deterministic CBOR, RFC 8949 section 4.2.1)::

    {"v": 2, "be": text, "ik": IK_A, "spk": uint, ["opk": uint,] "ci": bytes, "ek": bytes,
     ["eo": bytes,] "rp": bytes, "sig": bytes}

``ci``, ``ek`` and ``eo`` are the encapsulations to the identity KEM key, the signed prekey
and the one-time prekey; ``rp`` is the initiator's first ratchet public key. A v1 message is
refused with a message saying so (the sender must upgrade).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Final

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securechat.crypto.errors import (
    BackendMismatch,
    BadPrekeySignature,
    BadTranscriptSignature,
    ExpiredPrekey,
    MalformedHandshake,
    MalformedPrekey,
    ReplayedHandshake,
    UnknownPrekey,
)
from securechat.crypto.header import backend_id
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
    "ReplayedHandshake",
    "ResponderResult",
    "Transcript",
    "UnknownPrekey",
    "derive_root_key",
    "initiate",
    "respond",
]

HANDSHAKE_VERSION: Final = 2
DEFAULT_GRACE: Final = SIGNED_PREKEY_GRACE
_TRANSCRIPT_LABEL: Final = b"securechat-v2 handshake transcript\x00"
_SIGNATURE_LABEL: Final = b"securechat-v2 handshake signature\x00"
_ROOT_INFO: Final = b"securechat-v2 root key\x00"
_KDF_PREFIX: Final = b"\xff" * 32
_MAX_MESSAGE: Final = 8192
_MAX_FIELD: Final = 2048
_REQUIRED: Final = frozenset({"v", "be", "ik", "spk", "ci", "ek", "rp", "sig"})


@dataclass(frozen=True, slots=True)
class Transcript:
    """Everything both sides must agree on; its hash goes into the root key and the signature.

    One field per value the handshake depends on, so that a test can change each in turn.
    """

    version: int
    backend: str
    initiator_identity: bytes
    responder_identity: bytes
    identity_kem_public: bytes
    signed_prekey_id: int
    signed_prekey_public: bytes
    one_time_prekey_id: int | None
    one_time_prekey_public: bytes | None
    identity_kem_ct: bytes
    signed_prekey_ct: bytes
    one_time_prekey_ct: bytes | None
    ratchet_pub: bytes

    def encode(self) -> bytes:
        """``label || CBOR`` of every field (absent optional ones are left out)."""
        obj = {f.name: getattr(self, f.name) for f in fields(self)}
        present = {k: v for k, v in obj.items() if v is not None}
        return _TRANSCRIPT_LABEL + bytes(cbor2.dumps(present, canonical=True))

    def digest(self) -> bytes:
        """``TH``: SHA-256 of :meth:`encode`."""
        h = hashes.Hash(hashes.SHA256())
        h.update(self.encode())
        return h.finalize()


def derive_root_key(
    ss_ik: bytes, ss_spk: bytes, ss_opk: bytes | None, transcript_hash: bytes
) -> bytes:
    """X3DH ``KDF`` over the KEM secrets with the transcript hash in ``info``."""
    ikm = _KDF_PREFIX + ss_ik + ss_spk + (ss_opk or b"")
    return HKDF(hashes.SHA256(), 32, bytes(32), _ROOT_INFO + transcript_hash).derive(ikm)


@dataclass(frozen=True, slots=True)
class HandshakeMessage:
    """The initial message: everything the responder needs besides its own keys."""

    backend: str
    initiator_identity: bytes
    signed_prekey_id: int
    one_time_prekey_id: int | None
    identity_kem_ct: bytes
    spk_ct: bytes
    opk_ct: bytes | None
    ratchet_pub: bytes
    signature: bytes = b""

    def transcript(
        self,
        responder_identity: bytes,
        identity_kem_public: bytes,
        spk_public: bytes,
        opk_public: bytes | None,
    ) -> Transcript:
        """This message in the context of the responder's keys."""
        return Transcript(
            HANDSHAKE_VERSION, self.backend, self.initiator_identity, responder_identity,
            identity_kem_public, self.signed_prekey_id, spk_public, self.one_time_prekey_id,
            opk_public, self.identity_kem_ct, self.spk_ct, self.opk_ct, self.ratchet_pub,
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        """Deterministic CBOR of the message."""
        obj: dict[str, Any] = {
            "v": HANDSHAKE_VERSION,
            "be": self.backend,
            "ik": self.initiator_identity,
            "spk": self.signed_prekey_id,
            "ci": self.identity_kem_ct,
            "ek": self.spk_ct,
            "rp": self.ratchet_pub,
            "sig": self.signature,
        }
        if self.one_time_prekey_id is not None:
            obj["opk"] = self.one_time_prekey_id
        if self.opk_ct is not None:
            obj["eo"] = self.opk_ct
        return bytes(cbor2.dumps(obj, canonical=True))

    @classmethod
    def from_bytes(cls, data: bytes) -> HandshakeMessage:
        """Strictly parse a handshake message.

        :raises MalformedHandshake: for anything but the deterministic encoding of a valid
            v2 map; a v1 message gets its own explanation.
        """
        if len(data) > _MAX_MESSAGE:
            raise MalformedHandshake("handshake message too large")
        try:
            obj = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError, RecursionError) as exc:
            raise MalformedHandshake(f"handshake is not CBOR: {exc}") from None
        if isinstance(obj, dict) and obj.get("v") == 1:
            raise MalformedHandshake(
                "handshake v1 is no longer accepted (it does not bind the responder's identity"
                " key): the sender must upgrade securechat"
            )
        if not isinstance(obj, dict) or not (_REQUIRED <= obj.keys() <= _REQUIRED | {"opk", "eo"}):
            raise MalformedHandshake("handshake has missing or unknown fields")
        if ("opk" in obj) != ("eo" in obj) or obj["v"] != HANDSHAKE_VERSION:
            raise MalformedHandshake("unsupported version or half a one-time prekey")
        for key in ("spk", "opk"):
            value = obj.get(key, 0)
            if type(value) is not int or not 0 <= value < 2**32:
                raise MalformedHandshake(f"handshake field {key!r} must be a 32-bit id")
        for key in ("ik", "ci", "ek", "eo", "rp", "sig"):
            value = obj.get(key, b"x")
            if type(value) is not bytes or not 0 < len(value) <= _MAX_FIELD:
                raise MalformedHandshake(f"handshake field {key!r} must be non-empty bytes")
        if type(obj["be"]) is not str or not 0 < len(obj["be"]) <= 64:
            raise MalformedHandshake("handshake backend must be a short string")
        if bytes(cbor2.dumps(obj, canonical=True)) != data:
            raise MalformedHandshake("handshake is not in deterministic CBOR encoding")
        return cls(
            obj["be"], obj["ik"], obj["spk"], obj.get("opk"), obj["ci"], obj["ek"],
            obj.get("eo"), obj["rp"], obj["sig"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class InitiatorResult:
    """What :func:`initiate` gives: the root key, the message to send, the ratchet key pair."""

    root_key: bytes
    message: HandshakeMessage
    message_bytes: bytes
    ratchet_keypair: KeyPair
    transcript_hash: bytes


@dataclass(frozen=True, slots=True)
class ResponderResult:
    """What :func:`respond` gives.

    ``consumed_one_time_prekey`` is the id of the one-time prekey this handshake used: the
    caller deletes its private key once the first message has decrypted (X3DH 3.4).
    ``transcript_hash`` goes into the replay cache of ``signed_prekey_id`` at the same time.
    """

    root_key: bytes
    message: HandshakeMessage
    initiator_identity: bytes
    consumed_one_time_prekey: int | None
    signed_prekey_id: int
    transcript_hash: bytes


def _signature_payload(transcript_hash: bytes) -> bytes:
    return _SIGNATURE_LABEL + transcript_hash


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
        :meth:`SignedPrekey.verify`; :class:`MalformedPrekey` for an unparsable blob or a v1
        record without an identity KEM key (the peer's client is too old).
    """
    spk = SignedPrekey.from_bytes(signed_prekey)
    spk.verify(peer_identity, kem, now, check_key=False)
    if spk.identity_kem is None:
        raise MalformedPrekey(
            "the peer published only handshake-v1 keys (an older securechat): they must"
            " upgrade before a session can start"
        )
    opk = None
    if one_time_prekey is not None:
        opk = OneTimePrekey.from_bytes(one_time_prekey)
        check_backend(opk.backend, kem)
    try:  # encapsulation validates each public key (the IKem contract)
        ss_ik, ik_ct = kem.encapsulate(spk.identity_kem)
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
        identity_kem_ct=ik_ct,
        spk_ct=spk_ct,
        opk_ct=opk_ct,
        ratchet_pub=keypair.public,
    )
    th = unsigned.transcript(
        peer_identity, spk.identity_kem, spk.public, opk.public if opk is not None else None
    ).digest()
    message = replace(unsigned, signature=identity.sign(_signature_payload(th)))
    root_key = derive_root_key(ss_ik, ss_spk, ss_opk, th)
    return InitiatorResult(root_key, message, message.to_bytes(), keypair, th)


def respond(
    kem: IKem,
    identity: IdentityKeyPair,
    identity_kem: KeyPair | None,
    message_bytes: bytes,
    find_signed_prekey: Callable[[int], tuple[SignedPrekey, KeyPair] | None],
    find_one_time_prekey: Callable[[int], KeyPair | None],
    replayed: Callable[[int, bytes], bool],
    now: float,
    grace: float = DEFAULT_GRACE,
) -> ResponderResult:
    """Run the responder's side on a received handshake message.

    :param identity_kem: our identity KEM key pair for ``kem`` (None if we have none).
    :param find_signed_prekey: our signed prekey record and key pair by id, or None.
    :param find_one_time_prekey: our one-time prekey pair by id, or None (unknown or used).
    :param replayed: ``(signed_prekey_id, transcript_hash) -> bool``, the replay cache.
    :raises MalformedHandshake: unparsable or v1 message, or unusable encapsulation or key.
    :raises BackendMismatch: the message or the prekey is for another backend than ``kem``.
    :raises UnknownPrekey: a prekey id we do not hold (never issued, or already used).
    :raises BadTranscriptSignature: the initiator's signature does not verify.
    :raises ExpiredPrekey: our signed prekey expired more than ``grace`` seconds ago.
    :raises ReplayedHandshake: this first message was accepted before.
    """
    message = HandshakeMessage.from_bytes(message_bytes)
    check_backend(message.backend, kem)
    found = find_signed_prekey(message.signed_prekey_id)
    if found is None:
        raise UnknownPrekey(f"unknown signed prekey {message.signed_prekey_id}")
    spk, spk_pair = found
    check_backend(spk.backend, kem)
    if identity_kem is None or spk.identity_kem != identity_kem.public:
        raise UnknownPrekey(f"signed prekey {spk.key_id} has no identity KEM key of ours")
    opk_pair = None
    if message.one_time_prekey_id is not None:
        opk_pair = find_one_time_prekey(message.one_time_prekey_id)
        if opk_pair is None:
            raise UnknownPrekey(f"unknown or used one-time prekey {message.one_time_prekey_id}")
    th = message.transcript(
        identity.public_bytes(), identity_kem.public, spk.public,
        opk_pair.public if opk_pair is not None else None,
    ).digest()  # fmt: skip
    try:
        verify(message.initiator_identity, _signature_payload(th), message.signature)
    except SignatureError:
        raise BadTranscriptSignature("handshake transcript signature does not verify") from None
    if now >= spk.expires + grace:
        raise ExpiredPrekey(f"signed prekey {spk.key_id} expired at {spk.expires}")
    if replayed(spk.key_id, th):
        raise ReplayedHandshake("this first message was already received once: replay refused")
    try:
        kem.validate_public(message.ratchet_pub)
        ss_ik = kem.decapsulate(identity_kem.private, message.identity_kem_ct)
        ss_spk = kem.decapsulate(spk_pair.private, message.spk_ct)
        ss_opk = None
        if opk_pair is not None and message.opk_ct is not None:
            ss_opk = kem.decapsulate(opk_pair.private, message.opk_ct)
    except KemError as exc:
        raise MalformedHandshake(f"unusable encapsulation or ratchet key: {exc}") from None
    return ResponderResult(
        derive_root_key(ss_ik, ss_spk, ss_opk, th),
        message,
        message.initiator_identity,
        message.one_time_prekey_id,
        spk.key_id,
        th,
    )
