"""The keys a client publishes, kept in its keystore: identity KEM, signed and one-time prekeys,
and the replay cache of each signed prekey.

Why apart from :mod:`securechat.client.sessions`: this is the only writer of the keystore's
``prekeys`` map and of its replay caches, and the rules that protect old messages live here
together (X3DH 2.2 and 3.4, handshake v2 in :mod:`securechat.crypto.handshake.v2`):

* an identity KEM key pair per backend, made once and kept for the keystore's life (it is the
  long-term half of every session key: a leaked signed prekey alone opens nothing);
* a signed prekey per backend, replaced at half its life, whose private key is deleted after
  expiry plus the grace period (forward secrecy for first messages without a one-time prekey);
* one-time prekeys, each deleted once a first message that used it decrypted;
* per signed prekey, the transcript hashes of the first messages accepted under it, so that a
  replay is refused for as long as the prekey can open anything, and deleted with it.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import cbor2
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from securechat.client.keystore import KeystoreState
from securechat.crypto import envelope as env
from securechat.crypto.backends import SPECS, spec
from securechat.crypto.errors import CryptoError
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import IKem, KeyPair, get_kem
from securechat.crypto.prekeys import (
    SIGNED_PREKEY_GRACE,
    SignedPrekey,
    generate_one_time_prekeys,
    generate_signed_prekey,
)

__all__ = ["ONE_TIME_TARGET", "REPLAY_CACHE_LIMIT", "SIGNED_PREKEY_LIFETIME", "PrekeyStore"]

#: One-time prekeys to keep published per backend, from the specs (RSA keys are slow to make).
ONE_TIME_TARGET = {name: backend.one_time_target for name, backend in SPECS.items()}
#: One-time prekeys made per hour at most, per backend: peers who drain the pool (each
#: bundle fetch takes one) cost this client bounded CPU; an empty pool still lets them
#: start sessions on the signed prekey.
ONE_TIME_PER_HOUR = {name: backend.one_time_per_hour for name, backend in SPECS.items()}
SIGNED_PREKEY_LIFETIME = 30 * 24 * 3600
#: First messages remembered per signed prekey (32 bytes each). At half of it the prekey is
#: replaced at the next publish; when full, further first messages under it are refused
#: (never forgotten: forgetting would let a replay through).
REPLAY_CACHE_LIMIT = 20000


class _Budget:
    """A token bucket: ``per_hour`` keys an hour, as a burst of as many; starts full."""

    def __init__(self, per_hour: int, now: float) -> None:
        self.capacity = float(per_hour)
        self.tokens = self.capacity
        self.stamp = now

    def take_up_to(self, n: int, now: float) -> int:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp)
                          * self.capacity / 3600)  # fmt: skip
        self.stamp = now
        granted = min(n, int(self.tokens))
        self.tokens -= granted
        return granted


class PrekeyStore:
    """Our published keys in the keystore state (saved by the caller, with the rest)."""

    #: Runs one-time key generation off the reactor thread (an RSA key takes ~0.2 s of
    #: CPU); tests replace it with an inline call.
    @staticmethod
    def run_keygen(fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThread(fn, *args)

    def __init__(
        self,
        state: KeystoreState,
        identity: IdentityKeyPair,
        clock: Callable[[], float],
        kems: MutableMapping[str, IKem],
    ) -> None:
        self.state = state
        self.identity = identity
        self.clock = clock
        self._kems = kems
        self._budgets: dict[str, _Budget] = {}
        self._making: set[str] = set()

    async def make_one_time(self, backend: str, have: int) -> list[tuple[int, bytes]]:
        """New one-time prekeys to get back to the target from ``have``: made on a thread,
        at most :data:`ONE_TIME_PER_HOUR` an hour, one top-up per backend at a time (a
        second "prekeys low" while one runs adds nothing). Private halves go to the
        keystore; the caller saves it before publishing."""
        wanted = max(0, ONE_TIME_TARGET[backend] - have)
        if not wanted or backend in self._making:
            return []
        now = self.clock()
        budget = self._budgets.get(backend)
        if budget is None:
            budget = self._budgets[backend] = _Budget(ONE_TIME_PER_HOUR[backend], now)
        count = budget.take_up_to(wanted, now)
        if not count:
            return []
        kem = self.local_kem(backend)
        bid = env.backend_id(kem)
        first = self.state.counters.get("prekey_id", 1)
        self.state.counters["prekey_id"] = first + count
        self._making.add(backend)
        try:
            made = await self.run_keygen(generate_one_time_prekeys, kem, first, count)
        finally:
            self._making.discard(backend)
        out: list[tuple[int, bytes]] = []
        for otk, pair in made:
            self.state.prekeys[f"otk:{bid}:{otk.key_id}"] = _pack(otk.to_bytes(), pair)
            out.append((otk.key_id, otk.to_bytes()))
        return out

    def local_kem(self, name: str) -> IKem:
        """Our KEM for backend ``name`` with the client's default parameters."""
        kem = get_kem(name, spec(name).client_params)
        return self._kems.setdefault(env.backend_id(kem), kem)

    def _next_id(self) -> int:
        value = self.state.counters.get("prekey_id", 1)
        self.state.counters["prekey_id"] = value + 1
        return value

    def to_publish(
        self, backend: str, have_one_time: int | None
    ) -> tuple[bytes | None, list[tuple[int, bytes]]]:
        """What to upload for ``backend``: a signed prekey if ours is missing, ageing, from
        handshake v1 or its replay cache is half full, and enough one-time prekeys to get back
        to the target. Private halves go to the keystore.
        """
        kem = self.local_kem(backend)
        bid = env.backend_id(kem)
        now = self.clock()
        signed: bytes | None = None
        current = self.current_signed(bid)
        if (
            current is None
            or current.identity_kem is None
            or current.expires - now < SIGNED_PREKEY_LIFETIME / 2
            or len(self._replay_cache(bid, current.key_id)) >= REPLAY_CACHE_LIMIT // 2
        ):
            record, pair = generate_signed_prekey(
                self.identity, kem, self._next_id(), now, SIGNED_PREKEY_LIFETIME,
                self._make_identity_kem(bid, kem).public,
            )  # fmt: skip
            self.state.prekeys[f"spk:{bid}:{record.key_id}"] = _pack(record.to_bytes(), pair)
            self.state.extra[f"current_spk:{bid}"] = record.key_id
            signed = record.to_bytes()
            self._forget_expired_signed(bid, now)
        have = 0 if have_one_time is None else have_one_time
        wanted = max(0, ONE_TIME_TARGET[backend] - have)
        one_time: list[tuple[int, bytes]] = []
        if wanted:
            first = self.state.counters.get("prekey_id", 1)
            self.state.counters["prekey_id"] = first + wanted
            for otk, pair in generate_one_time_prekeys(kem, first, wanted):
                self.state.prekeys[f"otk:{bid}:{otk.key_id}"] = _pack(otk.to_bytes(), pair)
                one_time.append((otk.key_id, otk.to_bytes()))
        return signed, one_time

    def _forget_expired_signed(self, bid: str, now: float) -> None:
        """Delete signed-prekey private keys past expiry plus the handshake grace period, and
        their replay caches: a first message without a one-time prekey depends on them, so
        keeping them forever would let a stolen keystore open such messages however old
        (forward secrecy). Records of handshake v1 (no identity KEM key) open nothing now."""
        for name in [k for k in self.state.prekeys if k.startswith(f"spk:{bid}:")]:
            record = SignedPrekey.from_bytes(_unpack(self.state.prekeys[name])[0])
            if record.expires + SIGNED_PREKEY_GRACE < now or record.identity_kem is None:
                del self.state.prekeys[name]
                self._replay_caches().pop(f"{bid}:{record.key_id}", None)

    def current_signed(self, bid: str) -> SignedPrekey | None:
        """The signed prekey we publish now for backend id ``bid``."""
        key_id = self.state.extra.get(f"current_spk:{bid}")
        blob = self.state.prekeys.get(f"spk:{bid}:{key_id}")
        return None if blob is None else SignedPrekey.from_bytes(_unpack(blob)[0])

    # -- what a responder needs ---------------------------------------------------------
    def identity_kem(self, bid: str) -> KeyPair | None:
        """Our long-term identity KEM key pair for ``bid``, if we ever published one."""
        blob = self.state.prekeys.get(f"ikem:{bid}")
        return None if blob is None else _unpack(blob)[1]

    def _make_identity_kem(self, bid: str, kem: IKem) -> KeyPair:
        pair = self.identity_kem(bid)
        if pair is None:
            pair = kem.generate_keypair()
            self.state.prekeys[f"ikem:{bid}"] = _pack(b"", pair)
        return pair

    def find_signed(self, bid: str) -> Callable[[int], tuple[SignedPrekey, KeyPair] | None]:
        def find(key_id: int) -> tuple[SignedPrekey, KeyPair] | None:
            blob = self.state.prekeys.get(f"spk:{bid}:{key_id}")
            if blob is None:
                return None
            record, pair = _unpack(blob)
            return SignedPrekey.from_bytes(record), pair

        return find

    def find_one_time(self, bid: str) -> Callable[[int], KeyPair | None]:
        def find(key_id: int) -> KeyPair | None:
            blob = self.state.prekeys.get(f"otk:{bid}:{key_id}")
            return None if blob is None else _unpack(blob)[1]

        return find

    def _replay_caches(self) -> dict[str, list[bytes]]:
        caches: dict[str, list[bytes]] = self.state.extra.setdefault("replay", {})
        return caches

    def _replay_cache(self, bid: str, spk_id: int) -> list[bytes]:
        return self._replay_caches().get(f"{bid}:{spk_id}", [])

    def replayed(self, bid: str) -> Callable[[int, bytes], bool]:
        """The replay check for :func:`~securechat.crypto.handshake.v2.respond`.

        :raises CryptoError: (from the check) the prekey's cache is full; the prekey has been
            replaced already (at half), so only a flood of first messages gets here.
        """

        def replayed(spk_id: int, transcript_hash: bytes) -> bool:
            cache = self._replay_cache(bid, spk_id)
            if transcript_hash in cache:
                return True
            if len(cache) >= REPLAY_CACHE_LIMIT:
                raise CryptoError(
                    f"signed prekey {spk_id} has started too many sessions; it is being"
                    " replaced, ask the sender to try again"
                )
            return False

        return replayed

    def accepted(
        self, bid: str, one_time_id: int | None, spk_id: int, transcript_hash: bytes
    ) -> None:
        """A first message decrypted: its one-time prekey is used up and its transcript hash
        joins the replay cache of its signed prekey."""
        if one_time_id is not None:
            self.state.prekeys.pop(f"otk:{bid}:{one_time_id}", None)
        self._replay_caches().setdefault(f"{bid}:{spk_id}", []).append(transcript_hash)


def _pack(record: bytes, pair: KeyPair) -> bytes:
    return bytes(cbor2.dumps([record, pair.public, pair.private]))


def _unpack(blob: bytes) -> tuple[bytes, KeyPair]:
    record, public, private = cbor2.loads(blob)
    return bytes(record), KeyPair(bytes(public), bytes(private))
