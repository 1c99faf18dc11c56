# -*- test-case-name: tests.server.test_loginthrottle -*-
"""Login throttling that a third party cannot turn against the account's owner.

The earlier design refused every login to an account once *anyone* had failed too often
for it, so a stranger polling wrong passwords kept alice out (issue 10). Now:

- **Per (account, address) and per address** are the punitive limits: past them an
  attempt is refused (``throttled``) before any hashing. They only ever hurt the address
  that failed. A refused attempt is charged too (the bucket goes into a bounded debt), so
  polling while refused only pushes the attacker's next chance further away, and the
  cost of a refusal to the server (one frame decoded, two table lookups) is matched by
  the attacker's own frame and its growing wait.
- **Per account** failures from addresses that have *no recent success* for that account
  are counted; when they are used up, such addresses must solve a proof of work
  (:func:`securechat.wire.pow_valid`, the hashcash used for registration) before their
  password is checked. It is a price, never a refusal: alice on a new network still gets
  in, and an attacker spread over many addresses pays per guess at least the server's cost
  of one password hash (``[auth] login_pow_bits``, 18 bits by default, is about 0.3 s of
  SHA-256 in Python against 0.15 s for one Argon2id verification).
- An address where the account logged in successfully within ``known_address_ttl`` is
  exempt from the account limit: the owner's usual places are never affected by others.
- Public-key and certificate logins have their own per-address failure bucket: password
  failures never throttle them.

Everything is pure: time comes from ``now()``; tables are bounded
(:class:`securechat.server.ratelimit.BucketTable`, LRU eviction, which forgives rather
than refuses).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from securechat.config import AuthSection
from securechat.server.ratelimit import DEFAULT_MAX_KEYS, MAX_KEY_LENGTH, BucketTable, address_key

#: A refused attempt may push a punitive bucket this many bursts into debt, no further.
MAX_DEBT_BURSTS = 1.0


@dataclass(frozen=True)
class Verdict:
    """What may happen to a login attempt: go on, wait ``wait`` seconds, or pay ``pow_bits``."""

    wait: float = 0.0
    pow_bits: int = 0
    #: The attempt holds a reservation in the account's bucket (an unknown address).
    account_reserved: bool = False

    @property
    def allowed(self) -> bool:
        return self.wait <= 0 and self.pow_bits == 0


ALLOW = Verdict()


class KnownAddresses:
    """(account, address) pairs that logged in successfully recently; bounded, LRU.

    :param ttl: seconds a success keeps an address known.
    """

    def __init__(self, ttl: float, now: Callable[[], float], max_keys: int) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self._now = now
        self._seen: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: str) -> None:
        self._seen.pop(key, None)
        while len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen[key] = self._now()

    def __contains__(self, key: str) -> bool:
        stamp = self._seen.get(key)
        return stamp is not None and self._now() - stamp <= self.ttl

    def prune(self) -> int:
        limit = self._now() - self.ttl
        old = [k for k, t in self._seen.items() if t < limit]
        for k in old:
            del self._seen[k]
        return len(old)


def _pair(account: str, addr: str) -> str:
    # The address key is short (an IPv4 address or an IPv6 /64): keep it whole and cut
    # the account name instead, so two accounts never share a pair bucket by truncation.
    return f"{addr}|{account[: MAX_KEY_LENGTH - len(addr) - 1]}"


class LoginThrottle:
    """Failed-login buckets and known addresses (see the module docstring).

    Protocol: :meth:`check` before the expensive part of a password login; when it
    allows, it has reserved one attempt, and exactly one of :meth:`failed`,
    :meth:`succeeded` or :meth:`release` must follow. :meth:`check_signature` and
    :meth:`failed_signature` do the same for public-key and certificate logins.
    """

    def __init__(
        self,
        *,
        now: Callable[[], float],
        pair_burst: float = 5,
        pair_rate: float = 1 / 60,
        address_burst: float = 20,
        address_rate: float = 0.1,
        account_burst: float = 10,
        account_rate: float = 0.01,
        login_pow_bits: int = 18,
        known_address_ttl: float = 30 * 86400.0,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.pairs = BucketTable(pair_burst, pair_rate, now, max_keys)
        self.addresses = BucketTable(address_burst, address_rate, now, max_keys)
        self.accounts = BucketTable(account_burst, account_rate, now, max_keys)
        self.signatures = BucketTable(address_burst, address_rate, now, max_keys)
        self.known = KnownAddresses(known_address_ttl, now, max_keys)
        self.pow_bits = login_pow_bits

    @classmethod
    def from_config(
        cls, auth: AuthSection, now: Callable[[], float], max_keys: int = DEFAULT_MAX_KEYS
    ) -> LoginThrottle:
        """Build from the ``[auth]`` section."""
        return cls(
            now=now,
            pair_burst=auth.pair_burst,
            pair_rate=auth.pair_rate,
            address_burst=auth.address_burst,
            address_rate=auth.address_rate,
            account_burst=auth.account_burst,
            account_rate=auth.account_rate,
            login_pow_bits=auth.login_pow_bits,
            known_address_ttl=auth.known_address_ttl,
            max_keys=max_keys,
        )

    # -- password logins ---------------------------------------------------------------
    def check(self, account: str, address: str, proof: bool = False) -> Verdict:
        """May a password attempt for ``account`` from ``address`` go on now?

        :param proof: the attempt carries a valid proof of work of :attr:`pow_bits`.
        :returns: :data:`ALLOW` (an attempt is then reserved), a wait (refused and
            charged), or the proof-of-work difficulty to ask for.
        """
        addr = address_key(address)
        pair, addr_bucket = self.pairs.get(_pair(account, addr)), self.addresses.get(addr)
        wait = max(pair.wait_time(), addr_bucket.wait_time())
        if wait > 0:
            for bucket in (pair, addr_bucket):
                bucket.charge(MAX_DEBT_BURSTS)
            return Verdict(wait=max(pair.wait_time(), addr_bucket.wait_time()))
        known = _pair(account, addr) in self.known
        if not (known or proof) and self.pow_bits > 0 and self.accounts.wait_time(account) > 0:
            return Verdict(pow_bits=self.pow_bits)
        if not pair.reserve():  # pragma: no cover - wait_time said a token is there
            return Verdict(wait=pair.wait_time())
        if not addr_bucket.reserve():  # pragma: no cover - likewise
            pair.cancel()
            return Verdict(wait=addr_bucket.wait_time())
        if not known and not proof:
            return Verdict(account_reserved=self.accounts.get(account).reserve())
        return ALLOW

    def failed(self, account: str, address: str, verdict: Verdict = ALLOW) -> None:
        """A wrong password: one token from the pair and the address, and from the
        account unless the address is known for it."""
        addr = address_key(address)
        self.pairs.get(_pair(account, addr)).commit()
        self.addresses.get(addr).commit()
        if _pair(account, addr) not in self.known:
            bucket = self.accounts.get(account)
            if verdict.account_reserved:
                bucket.commit()
            else:
                bucket.spend()

    def succeeded(self, account: str, address: str, verdict: Verdict = ALLOW) -> None:
        """The right password: the attempt costs nothing and the address becomes known."""
        self.release(account, address, verdict)
        self.known.add(_pair(account, address_key(address)))

    def release(self, account: str, address: str, verdict: Verdict = ALLOW) -> None:
        """Give back the reservation of :meth:`check` (whose ``verdict`` this was)
        without counting an attempt."""
        addr = address_key(address)
        keys = [(self.pairs, _pair(account, addr)), (self.addresses, addr)]
        if verdict.account_reserved:
            keys.append((self.accounts, account))
        for table, key in keys:
            bucket = table.peek(key)
            if bucket is not None:
                bucket.cancel()

    # -- public-key and certificate logins ------------------------------------------------
    def check_signature(self, address: str) -> Verdict:
        """Per-address limit on failed public-key and certificate logins (cheap to check,
        so no proof of work; password failures do not count here)."""
        bucket = self.signatures.get(address_key(address))
        wait = bucket.wait_time()
        if wait > 0:
            bucket.charge(MAX_DEBT_BURSTS)
            return Verdict(wait=bucket.wait_time())
        bucket.reserve()
        return ALLOW

    def failed_signature(self, address: str) -> None:
        self.signatures.get(address_key(address)).commit()

    def release_signature(self, address: str) -> None:
        bucket = self.signatures.peek(address_key(address))
        if bucket is not None:
            bucket.cancel()

    def prune(self) -> int:
        """Drop idle buckets and expired known addresses; returns how many were dropped."""
        tables = (self.pairs, self.addresses, self.accounts, self.signatures)
        return sum(t.prune() for t in tables) + self.known.prune()
