# -*- test-case-name: tests.server.test_registrationlimits -*-
"""Registration rate per address, and a proof of work that rises under a burst.

Open registration gives an attacker unlimited accounts, and each registration costs the
server one password hash (issue 10: 40 registrations from one address in 4.9 s). Two
limits, both cheap to check:

- per address (IPv6: per /64), a token bucket (``[auth] registration_address_burst``,
  ``registration_address_rate``): past it, ``throttled`` with ``retry_after``;
- over all addresses, the recent registration rate (an exponentially decaying count
  with a one-minute time constant, so about "registrations in the last minute"). Above
  ``registration_burst`` per minute the proof of work rises to at least
  :data:`BURST_FLOOR_BITS` bits, plus 2 bits for every doubling of the rate, up to
  ``registration_pow_max_bits``. Honest users pay a second or two more during an
  attack; an attacker spread over many addresses pays more for every account.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from securechat.config import AuthSection
from securechat.server.ratelimit import DEFAULT_MAX_KEYS, BucketTable, address_key

#: Time constant of the registration-rate estimate, seconds.
RATE_WINDOW = 60.0
#: The difficulty a burst starts at (2**16 SHA-256: about 0.1 s for a Python client).
BURST_FLOOR_BITS = 16


class RegistrationLimits:
    """Per-address registration buckets and the burst-dependent proof-of-work difficulty."""

    def __init__(
        self,
        *,
        now: Callable[[], float],
        address_burst: float = 5,
        address_rate: float = 0.002,
        base_bits: int = 0,
        max_bits: int = 24,
        burst_per_minute: float = 10,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self.addresses = BucketTable(address_burst, address_rate, now, max_keys)
        self.base_bits = base_bits
        self.max_bits = max(max_bits, base_bits)
        self.burst = burst_per_minute
        self._now = now
        self._load = 0.0
        self._stamp = now()

    @classmethod
    def from_config(
        cls, auth: AuthSection, now: Callable[[], float], max_keys: int = DEFAULT_MAX_KEYS
    ) -> RegistrationLimits:
        """Build from the ``[auth]`` section."""
        return cls(
            now=now,
            address_burst=auth.registration_address_burst,
            address_rate=auth.registration_address_rate,
            base_bits=auth.registration_pow_bits,
            max_bits=auth.registration_pow_max_bits,
            burst_per_minute=auth.registration_burst,
            max_keys=max_keys,
        )

    def load(self) -> float:
        """Registrations in about the last minute (decaying count)."""
        t = self._now()
        self._load *= math.exp(-max(0.0, t - self._stamp) / RATE_WINDOW)
        self._stamp = t
        return self._load

    def pow_bits(self) -> int:
        """The proof-of-work difficulty a registration must bring now."""
        load = self.load()
        if self.burst <= 0 or load <= self.burst:
            return self.base_bits
        extra = BURST_FLOOR_BITS + 2 * int(math.log2(load / self.burst))
        return min(self.max_bits, max(self.base_bits, extra))

    def check(self, address: str) -> float:
        """Count a registration attempt from ``address``; 0 if it may go on, else the
        seconds to wait (nothing is counted then)."""
        bucket = self.addresses.get(address_key(address))
        if not bucket.take():
            return max(bucket.wait_time(), 1e-3)
        self.load()
        self._load += 1
        return 0.0

    def prune(self) -> int:
        """Drop idle buckets (for the periodic housekeeping)."""
        return self.addresses.prune()
