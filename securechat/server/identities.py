"""Which identity key each recipient has now, for refusing sends to a stale identity.

A ``send`` item may name (by :func:`securechat.wire.identity_digest`) the recipient
identity key its envelope was encrypted to. If the recipient re-created their account
(new identity key), the relay refuses the item with ``stale-identity`` and stores nothing,
so the sender learns of the key change at once instead of the new recipient receiving an
envelope it cannot open. The digests are cached (bounded) and dropped whenever this
process sees the key change: a registration, a login, a key publication, an account removal.
"""

from __future__ import annotations

from securechat import wire
from securechat.server.store.interface import IStore

#: Cached digests at most (cleared wholesale when full, like the known-users cache).
CACHE_SIZE = 100_000
_UNKNOWN = b""


class IdentityDirectory:
    """Digest of each user's current identity key (``None``: the account has none yet)."""

    def __init__(self, store: IStore) -> None:
        self.store = store
        self._digests: dict[str, bytes | None] = {}

    def cached(self, user: str) -> bytes | None:
        """The cached digest, ``b""`` when not cached (look it up), ``None`` for no key."""
        return self._digests.get(user, _UNKNOWN)

    async def lookup(self, user: str) -> bytes | None:
        record = await self.store.get_user(user)
        digest = None
        if record is not None and record.identity_key is not None:
            digest = wire.identity_digest(record.identity_key)
        if len(self._digests) >= CACHE_SIZE:
            self._digests.clear()
        self._digests[user] = digest
        return digest

    def forget(self, user: str) -> None:
        """``user``'s key may have changed: the next send to them reads it again."""
        self._digests.pop(user, None)

    def refusal(self, named: bytes | None, current: bytes | None) -> str | None:
        """``stale-identity`` if an item naming ``named`` must be refused."""
        if named is None:
            return None  # an older client: nothing to compare
        if current is None or not wire.constant_time_equal(named, current):
            return wire.E_STALE_IDENTITY
        return None
