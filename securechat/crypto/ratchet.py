"""The Double Ratchet with its Diffie-Hellman step replaced by a KEM step.

Followed: Signal's Double Ratchet specification (revision 1, 2016-11-20), sections 2-3, with
its recommended functions: ``KDF_RK`` = HKDF-SHA256 (RFC 5869, salt = root key, 64 bytes split
into new root key and chain key), ``KDF_CK`` = HMAC-SHA256 with input ``0x01`` (message-key
seed) and ``0x02`` (next chain key), exactly as libsignal (its chain-key vector is a test).

The KEM step (why it looks like this): where a DH ratchet turn combines a fresh key pair with
the peer's latest ratchet public key, here the side starting a turn *encapsulates* to the peer's
latest ratchet public key, feeds the secret to ``KDF_RK``, and sends the encapsulation with a
fresh ratchet public key of its own; the peer decapsulates with its ratchet private key. So each
side injects fresh randomness on each of its turns, and as a side only turns after receiving a
new chain (which carries the peer's newest key), each key pair is encapsulated to exactly once
and its private key is replaced at the owner's next turn.

For slow key generation (``rotates_every_turn`` False: RSA) every turn still encapsulates, but
a *new key pair* is made only at a turn after :data:`ROTATE_MESSAGES` messages sent with the
current one or :data:`ROTATE_SECONDS` since it was made, whichever comes first: until then a
stolen ratchet private key (with the root key) lets an attacker follow the turns encapsulated
to it, so post-compromise security waits for the next rotation (``docs/security.md``).

Every header repeats the ratchet public key *and* the encapsulation that opened its chain
(any message may be the first to arrive); a chain is named by a 16-byte digest of both.

Bounds (Double Ratchet section 4; values from ``security-notes.md``): :data:`MAX_SKIP` skipped
keys per chain, :data:`MAX_STORED` stored keys (oldest evicted), :data:`MAX_CHAINS` chains; a
used key is deleted. :meth:`Ratchet.decrypt_step` changes nothing: its :class:`Pending` is
committed only after the AEAD accepted the message (section 3.5: roll back on failure).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import cbor2

from securechat.crypto import errors
from securechat.crypto.header import backend_id
from securechat.crypto.kdf import chain_id, kdf_ck, kdf_rk
from securechat.crypto.kem import IKem, KemError, KeyPair

__all__ = [
    "MAX_CHAINS",
    "MAX_SKIP",
    "MAX_STORED",
    "Pending",
    "Ratchet",
    "RatchetHeader",
    "kdf_ck",
    "kdf_rk",
]

MAX_SKIP: Final = 1000
MAX_STORED: Final = 2000
MAX_CHAINS: Final = 5
#: How many closed receiving chains are remembered, so a late duplicate is recognised as such.
MAX_RETIRED: Final = 40
ROTATE_MESSAGES: Final = 50
ROTATE_SECONDS: Final = 3600.0
_STATE_VERSION: Final = 1


class RatchetHeader(NamedTuple):
    """The ratchet fields of a message header (``HEADER(dh, pn, n)`` plus the encapsulation)."""

    ratchet_pub: bytes
    kem_ct: bytes
    pn: int
    n: int


@dataclass(slots=True)
class _SendChain:
    ratchet_pub: bytes
    kem_ct: bytes
    chain_key: bytes
    n: int
    pn: int


@dataclass(slots=True)
class _RecvChain:
    cid: bytes
    ratchet_pub: bytes
    kem_ct: bytes
    chain_key: bytes
    n: int


@dataclass(slots=True)
class Pending:
    """Result of :meth:`Ratchet.decrypt_step`: the message key and the state change to commit.

    Commit it (or drop it) before the next :meth:`Ratchet.decrypt_step`: it describes a change
    relative to the state it was computed from.
    """

    message_key: bytes
    advance: tuple[bytes, int] | None = None
    chain: _RecvChain | None = None
    root_key: bytes | None = None
    peer_pub: bytes | None = None
    retire: bytes | None = None
    used: tuple[bytes, int] | None = None
    add: Sequence[tuple[bytes, int, bytes]] = ()


def _skip(cid: bytes, chain_key: bytes, start: int, until: int) -> tuple[bytes, list[Any]]:
    """Derive the keys of messages ``start..until-1`` (Double Ratchet ``SkipMessageKeys``)."""
    if until - start > MAX_SKIP:
        raise errors.TooManySkipped(
            f"{until - start} skipped messages exceed the limit of {MAX_SKIP}"
        )
    keys = []
    for n in range(start, until):
        message_key, chain_key = kdf_ck(chain_key)
        keys.append((cid, n, message_key))
    return chain_key, keys


class Ratchet:
    """One side's ratchet state (build it with :meth:`initiator` or :meth:`responder`)."""

    def __init__(self, kem: IKem, root_key: bytes, clock: Callable[[], float]) -> None:
        self.kem = kem
        self.backend = backend_id(kem)
        self.clock = clock
        self.root_key = root_key
        self.keypair: KeyPair | None = None
        self.keypair_born = 0.0
        self.sent_with_keypair = 0
        self.peer_pub: bytes | None = None
        self.need_turn = False
        self.send: _SendChain | None = None
        self.recv: _RecvChain | None = None
        self.skipped: dict[bytes, dict[int, bytes]] = {}
        self.stored = 0
        self.retired: deque[bytes] = deque(maxlen=MAX_RETIRED)

    @classmethod
    def initiator(
        cls,
        kem: IKem,
        root_key: bytes,
        keypair: KeyPair,
        clock: Callable[[], float] = time.time,
    ) -> Ratchet:
        """State of the handshake initiator, who may send at once on chain 0.

        The handshake's own encapsulations were this side's first KEM step, so chain 0 is
        ``KDF_RK(root_key, "")``; ``keypair`` is the ratchet key pair announced in the handshake.
        """
        state = cls(kem, b"", clock)
        state.root_key, chain_key = kdf_rk(root_key, b"")
        state.keypair, state.keypair_born = keypair, clock()
        state.send = _SendChain(keypair.public, b"", chain_key, 0, 0)
        return state

    @classmethod
    def responder(
        cls,
        kem: IKem,
        root_key: bytes,
        peer_pub: bytes,
        clock: Callable[[], float] = time.time,
    ) -> Ratchet:
        """State of the responder: chain 0 is its first receiving chain; it owes a turn."""
        state = cls(kem, b"", clock)
        state.root_key, chain_key = kdf_rk(root_key, b"")
        state.recv = _RecvChain(chain_id(peer_pub, b""), peer_pub, b"", chain_key, 0)
        state.peer_pub, state.need_turn = peer_pub, True
        return state

    def _turn(self) -> None:
        """Start a new sending chain: encapsulate to the peer's newest ratchet key."""
        assert self.peer_pub is not None
        now = self.clock()
        rotate = (
            self.keypair is None
            or self.kem.rotates_every_turn
            or self.sent_with_keypair >= ROTATE_MESSAGES
            or now - self.keypair_born >= ROTATE_SECONDS
        )
        keypair = self.kem.generate_keypair() if rotate else self.keypair
        assert keypair is not None
        secret, kem_ct = self.kem.encapsulate(self.peer_pub)
        self.root_key, chain_key = kdf_rk(self.root_key, secret)
        if rotate:
            self.keypair, self.keypair_born, self.sent_with_keypair = keypair, now, 0
        pn = self.send.n if self.send is not None else 0
        self.send = _SendChain(keypair.public, kem_ct, chain_key, 0, pn)
        self.need_turn = False

    def encrypt_step(self) -> tuple[RatchetHeader, bytes]:
        """Advance the sending chain (with a KEM turn first when one is owed).

        :returns: the header fields and the message-key seed for this message.
        """
        if self.need_turn:
            self._turn()
        send = self.send
        assert send is not None
        message_key, send.chain_key = kdf_ck(send.chain_key)
        header = RatchetHeader(send.ratchet_pub, send.kem_ct, send.pn, send.n)
        send.n += 1
        self.sent_with_keypair += 1
        return header, message_key

    def decrypt_step(self, header: RatchetHeader) -> Pending:
        """Find or derive the key of a received message *without changing the state*.

        :raises errors.DuplicateMessage: the key was already used (or discarded).
        :raises TooManySkipped: more than :data:`MAX_SKIP` messages would be skipped.
        :raises AuthenticationFailed: a new chain whose encapsulation or key is unusable.
        """
        recv = self.recv
        n = header.n
        if (
            recv is not None
            and header.ratchet_pub == recv.ratchet_pub
            and (header.kem_ct == recv.kem_ct)
        ):
            if n < recv.n:
                return self._skipped_key(recv.cid, n)
            if n == recv.n:  # the common case: the next message in order
                message_key, chain_key = kdf_ck(recv.chain_key)
                return Pending(message_key, (chain_key, n + 1))
            chain_key, add = _skip(recv.cid, recv.chain_key, recv.n, n)
            message_key, chain_key = kdf_ck(chain_key)
            return Pending(message_key, (chain_key, n + 1), add=add)
        cid = chain_id(header.ratchet_pub, header.kem_ct)
        if cid in self.skipped or cid in self.retired:
            return self._skipped_key(cid, n)
        return self._new_chain(cid, header)

    def _new_chain(self, cid: bytes, header: RatchetHeader) -> Pending:
        if self.keypair is None or not header.kem_ct:
            raise errors.AuthenticationFailed("message opens a chain this session cannot have")
        recv, add = self.recv, []
        for skipped in (header.pn - recv.n if recv is not None else 0, header.n):
            if skipped > MAX_SKIP:
                raise errors.TooManySkipped(
                    f"{skipped} skipped messages exceed the limit {MAX_SKIP}"
                )
        try:
            self.kem.validate_public(header.ratchet_pub)
            secret = self.kem.decapsulate(self.keypair.private, header.kem_ct)
        except KemError as exc:
            raise errors.AuthenticationFailed(
                f"unusable ratchet key or encapsulation: {exc}"
            ) from None
        if recv is not None:
            add = _skip(recv.cid, recv.chain_key, recv.n, header.pn)[1]
        root_key, chain_key = kdf_rk(self.root_key, secret)
        chain_key, more = _skip(cid, chain_key, 0, header.n)
        message_key, chain_key = kdf_ck(chain_key)
        return Pending(
            message_key,
            chain=_RecvChain(cid, header.ratchet_pub, header.kem_ct, chain_key, header.n + 1),
            root_key=root_key,
            peer_pub=header.ratchet_pub,
            retire=recv.cid if recv is not None else None,
            add=[*add, *more],
        )

    def _skipped_key(self, cid: bytes, n: int) -> Pending:
        keys = self.skipped.get(cid)
        if keys is None or n not in keys:
            raise errors.DuplicateMessage("message key already used or discarded")
        return Pending(keys[n], used=(cid, n))

    def commit(self, pending: Pending) -> None:
        """Apply a :class:`Pending` once the message it belongs to has been authenticated."""
        if pending.advance is not None and not pending.add:
            assert self.recv is not None
            self.recv.chain_key, self.recv.n = pending.advance
            return
        if pending.used is not None:
            cid, n = pending.used
            keys = self.skipped[cid]
            del keys[n]
            self.stored -= 1
            if not keys:
                del self.skipped[cid]
        if pending.retire is not None:
            self.retired.append(pending.retire)
        for cid, n, message_key in pending.add:
            self.skipped.setdefault(cid, {})[n] = message_key
            self.stored += 1
        while len(self.skipped) > MAX_CHAINS:
            self.stored -= len(self.skipped.pop(next(iter(self.skipped))))
        while self.stored > MAX_STORED:
            oldest_cid = next(iter(self.skipped))
            keys = self.skipped[oldest_cid]
            del keys[next(iter(keys))]
            self.stored -= 1
            if not keys:
                del self.skipped[oldest_cid]
        if pending.chain is not None:
            self.recv = pending.chain
        elif pending.advance is not None:
            assert self.recv is not None
            self.recv.chain_key, self.recv.n = pending.advance
        if pending.root_key is not None:
            self.root_key = pending.root_key
        if pending.peer_pub is not None:
            self.peer_pub, self.need_turn = pending.peer_pub, True

    def to_obj(self) -> dict[str, Any]:
        """The whole state as a CBOR-ready map (it contains secrets: encrypt it at rest)."""
        send, recv = self.send, self.recv
        return {
            "v": _STATE_VERSION,
            "be": self.backend,
            "rk": self.root_key,
            "kp": None if self.keypair is None else [self.keypair.public, self.keypair.private],
            "born": float(self.keypair_born),
            "sent": self.sent_with_keypair,
            "peer": self.peer_pub,
            "turn": self.need_turn,
            "send": send and [send.ratchet_pub, send.kem_ct, send.chain_key, send.n, send.pn],
            "recv": recv and [recv.ratchet_pub, recv.kem_ct, recv.chain_key, recv.n],
            "skip": [[cid, [[n, k] for n, k in ks.items()]] for cid, ks in self.skipped.items()],
            "ret": list(self.retired),
        }

    def to_bytes(self) -> bytes:
        """Deterministic CBOR of :meth:`to_obj`."""
        return bytes(cbor2.dumps(self.to_obj(), canonical=True))

    @classmethod
    def from_obj(cls, obj: Any, kem: IKem, clock: Callable[[], float] = time.time) -> Ratchet:
        """Rebuild a state saved by :meth:`to_obj` for the same backend.

        :raises MalformedState: for any structural or type error, or another backend.
        """
        try:
            if obj["v"] != _STATE_VERSION or obj["be"] != backend_id(kem):
                raise errors.MalformedState("ratchet state of another version or backend")
            state = cls(kem, _b(obj["rk"]), clock)
            if obj["kp"] is not None:
                state.keypair = KeyPair(public=_b(obj["kp"][0]), private=_b(obj["kp"][1]))
            state.keypair_born = float(obj["born"])
            state.sent_with_keypair = _u(obj["sent"])
            state.peer_pub = None if obj["peer"] is None else _b(obj["peer"])
            state.need_turn = obj["turn"] is True
            if (send := obj["send"]) is not None:
                state.send = _SendChain(
                    _b(send[0]), _b(send[1]), _b(send[2]), _u(send[3]), _u(send[4])
                )
            if (recv := obj["recv"]) is not None:
                rp, ct = _b(recv[0]), _b(recv[1])
                state.recv = _RecvChain(chain_id(rp, ct), rp, ct, _b(recv[2]), _u(recv[3]))
            for cid, keys in obj["skip"]:
                state.skipped[_b(cid)] = {_u(n): _b(k) for n, k in keys}
                state.stored += len(keys)
            state.retired.extend(_b(cid) for cid in obj["ret"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise errors.MalformedState(f"bad ratchet state: {exc!r}") from None
        if state.stored > MAX_STORED or len(state.skipped) > MAX_CHAINS:
            raise errors.MalformedState("ratchet state stores too many keys")
        return state

    @classmethod
    def from_bytes(cls, data: bytes, kem: IKem, clock: Callable[[], float] = time.time) -> Ratchet:
        """Inverse of :meth:`to_bytes`."""
        try:
            obj = cbor2.loads(data)
        except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
            raise errors.MalformedState(f"ratchet state is not CBOR: {exc}") from None
        return cls.from_obj(obj, kem, clock)


def _b(value: Any) -> bytes:
    if type(value) is not bytes:
        raise TypeError("expected bytes")
    return value


def _u(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise TypeError("expected an unsigned integer")
    return value
