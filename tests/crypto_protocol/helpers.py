"""Shared set-up for the protocol tests: backends, parties with published prekeys, sessions."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from zope.interface import implementer

from securechat.crypto import prekeys
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import IKem, KeyPair, get_kem
from securechat.crypto.session import Session

NOW = 1_700_000_000.0

#: The backends under test, with the fast parameter choices (ffdhe2048, rsa2048) for speed;
#: the defaults (ffdhe3072, rsa3072) run the same code paths with bigger numbers.
BACKENDS: dict[str, tuple[str, dict[str, object]]] = {
    "dh-ffdhe2048": ("dh", {"group": "ffdhe2048"}),
    "ecdh-x25519": ("ecdh", {"curve": "x25519"}),
    "ecdh-p256": ("ecdh", {"curve": "p256"}),
    "rsa-2048": ("rsa", {"bits": 2048}),
    "hybrid-xwing": ("hybrid", {"kem": "xwing"}),
}


@cache
def kem_for(label: str) -> IKem:
    name, params = BACKENDS[label]
    return get_kem(name, params)


@implementer(IKem)
class PooledKem:
    """Wraps a KEM so key generation cycles through a few pregenerated pairs.

    Only for long soak tests of RSA, where a fresh 2048-bit key per rotation would dominate the
    run time; every other operation is the real backend's.
    """

    def __init__(self, inner: IKem, size: int = 4) -> None:
        self._inner = inner
        self.name = inner.name
        self.params = inner.params
        self.secret_size = inner.secret_size
        self.rotates_every_turn = inner.rotates_every_turn
        self._pool = itertools.cycle([inner.generate_keypair() for _ in range(size)])

    def generate_keypair(self) -> KeyPair:
        return next(self._pool)

    def validate_public(self, public: bytes) -> None:
        self._inner.validate_public(public)

    def encapsulate(self, public: bytes) -> tuple[bytes, bytes]:
        return self._inner.encapsulate(public)

    def decapsulate(self, private: bytes, enc: bytes) -> bytes:
        return self._inner.decapsulate(private, enc)


class Clock:
    """A settable clock (seconds) for expiry and rotation tests."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Responder:
    """A user who has published a signed prekey and some one-time prekeys for one backend."""

    kem: IKem
    user: str = "bob"
    identity: IdentityKeyPair = field(default_factory=IdentityKeyPair.generate)
    otk_count: int = 2
    lifetime: int = prekeys.DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        self.ikem = self.kem.generate_keypair()
        self.spk, self.spk_pair = prekeys.generate_signed_prekey(
            self.identity, self.kem, 1, NOW, self.lifetime, self.ikem.public
        )
        #: The replay cache: (signed prekey id, transcript hash) of accepted first messages.
        self.accepted: set[tuple[int, bytes]] = set()
        self.otks = dict(
            (opk.key_id, (opk, pair))
            for opk, pair in prekeys.generate_one_time_prekeys(self.kem, 100, self.otk_count)
        )

    def find_signed(self, key_id: int) -> tuple[prekeys.SignedPrekey, KeyPair] | None:
        return (self.spk, self.spk_pair) if key_id == self.spk.key_id else None

    def find_one_time(self, key_id: int) -> KeyPair | None:
        found = self.otks.get(key_id)
        return found[1] if found is not None else None

    def replayed(self, spk_id: int, transcript_hash: bytes) -> bool:
        return (spk_id, transcript_hash) in self.accepted

    def otk_blob(self) -> bytes | None:
        return next(iter(self.otks.values()))[0].to_bytes() if self.otks else None

    def respond(
        self, envelope: bytes, clock: Callable[[], float] = lambda: NOW
    ) -> tuple[Session, bytes]:
        done = Session.respond(
            envelope,
            kem=self.kem,
            identity=self.identity,
            identity_kem=self.ikem,
            local_user=self.user,
            find_signed_prekey=self.find_signed,
            find_one_time_prekey=self.find_one_time,
            replayed=self.replayed,
            clock=clock,
        )
        if done.consumed_one_time_prekey is not None:
            del self.otks[done.consumed_one_time_prekey]
        self.accepted.add((done.signed_prekey_id, done.transcript_hash))
        return done.session, done.plaintext


def start(
    kem: IKem,
    responder: Responder | None = None,
    *,
    use_otk: bool = True,
    clock: Callable[[], float] = lambda: NOW,
) -> tuple[Session, Responder]:
    """Alice initiates a session to a fresh (or the given) Bob."""
    bob = responder or Responder(kem)
    alice = IdentityKeyPair.generate()
    session = Session.initiate(
        kem=kem,
        identity=alice,
        local_user="alice",
        peer_user=bob.user,
        peer_identity=bob.identity.public_bytes(),
        signed_prekey=bob.spk.to_bytes(),
        one_time_prekey=bob.otk_blob() if use_otk else None,
        clock=clock,
    )
    return session, bob


def pair(kem: IKem, clock: Callable[[], float] = lambda: NOW) -> tuple[Session, Session]:
    """Two sessions that have each sent and received one message (both ratchets turned)."""
    alice, bob = start(kem, clock=clock)
    bob_session, first = bob.respond(alice.encrypt(b"hello bob"), clock)
    assert first == b"hello bob"
    assert alice.decrypt(bob_session.encrypt(b"hello alice"))[1] == b"hello alice"
    return alice, bob_session
