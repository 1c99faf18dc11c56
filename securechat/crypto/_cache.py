"""A small bounded LRU map for the backends' parsed-key caches.

Why: loading a key from its serialised form costs about as much as the operation it is loaded
for (an X25519 private key load is a scalar multiplication; a DH private key load is a modular
exponentiation; an RSA key is a DER parse and, for a peer key, our policy checks). The caches
hold only results that passed every check, keyed by the exact bytes checked, so a hit returns
what a fresh load of the same bytes would. They are small (private keys must not linger: each
holds at most :data:`PRIVATE_SLOTS` of them, and one-time ephemeral keys are removed at once).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, Generic, TypeVar

__all__ = ["PRIVATE_SLOTS", "PUBLIC_SLOTS", "Lru"]

#: Parsed private keys kept per backend: the signed prekey, recent one-time prekeys and the
#: ratchet key pairs of the few sessions that are active at once.
PRIVATE_SLOTS: Final = 32
#: Validated peer public keys kept per backend.
PUBLIC_SLOTS: Final = 128

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Least-recently-used map of at most ``size`` entries."""

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._size = size

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def pop(self, key: K) -> V | None:
        return self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
