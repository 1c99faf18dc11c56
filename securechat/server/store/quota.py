# -*- test-case-name: tests.server.test_store_quota -*-
"""Offline-queue quotas: what one sender, all strangers and everyone together may queue.

Without them one account could fill another user's mailbox (10,000 envelopes, 655 MB at
the 64 KiB envelope limit) so that nobody else reaches them. Limits hold per recipient:

* everything queued for them: ``queue_limit`` envelopes and ``queue_bytes`` bytes;
* per sender who is an accepted contact (or a room co-member, for room envelopes):
  ``sender_limit`` and ``sender_bytes``, so one contact cannot take the whole queue;
* per sender who is not (a *stranger*, only possible under ``messaging = "anyone"``): the
  small first-contact allowance ``stranger_limit`` and ``stranger_bytes``;
* all strangers together: ``strangers_limit`` and ``strangers_bytes``, so that many
  attacker accounts cannot fill the queue either: the rest stays for the recipient's
  contacts.

The counters live in memory (:class:`QueueUsage`), loaded for a recipient on first use
with one grouped query and kept current per batch, so the group-commit hot path runs no
extra query per envelope. Whether a sender counts as a stranger is decided by the relay at
send time; counters loaded from the database (after a restart, or after the recipient
acknowledged) count every sender as a contact until that sender queues again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from securechat.config import StoreSection
from securechat.errors import QueueFull

#: (sender, envelopes, bytes) rows of one recipient's queue, as the store reads them.
UsageRows = Iterable[tuple[str, int, int]]
#: Reads one recipient's :data:`UsageRows`.
Loader = Callable[[str], UsageRows]


@dataclass(frozen=True)
class QueueLimits:
    """The ``[store]`` quota keys (see the module docstring)."""

    queue_limit: int = 10_000
    queue_bytes: int = 256 << 20
    sender_limit: int = 5_000
    sender_bytes: int = 128 << 20
    stranger_limit: int = 20
    stranger_bytes: int = 1 << 20
    strangers_limit: int = 1_000
    strangers_bytes: int = 32 << 20

    @classmethod
    def from_section(cls, section: StoreSection) -> QueueLimits:
        return cls(
            section.queue_limit,
            section.queue_bytes,
            section.sender_limit,
            section.sender_bytes,
            section.stranger_limit,
            section.stranger_bytes,
            section.strangers_limit,
            section.strangers_bytes,
        )


class _Pair:
    """What one sender has queued for one recipient."""

    __slots__ = ("count", "size", "stranger")

    def __init__(self) -> None:
        self.count = 0
        self.size = 0
        self.stranger = False


class _Mailbox:
    """One recipient's counters."""

    __slots__ = ("count", "pairs", "size", "stranger_count", "stranger_size")

    def __init__(self, rows: UsageRows) -> None:
        self.count = self.size = self.stranger_count = self.stranger_size = 0
        self.pairs: dict[str, _Pair] = {}
        for sender, count, size in rows:
            pair = self.pairs.setdefault(sender, _Pair())
            pair.count += count
            pair.size += size
            self.count += count
            self.size += size


#: One call's wanted additions: (recipient, sender, stranger) -> [envelopes, bytes].
Wanted = dict[tuple[str, str, bool], list[int]]


def wanted_of(envelopes: Iterable[tuple[str, str, int, bool]]) -> Wanted:
    """Sum ``(recipient, sender, payload size, stranger)`` per pair (one call's envelopes)."""
    wanted: Wanted = {}
    for recipient, sender, size, stranger in envelopes:
        entry = wanted.get((recipient, sender, stranger))
        if entry is None:
            wanted[(recipient, sender, stranger)] = [1, size]
        else:
            entry[0] += 1
            entry[1] += size
    return wanted


class QueueUsage:
    """Per-recipient queue counters with the limit checks.

    :param limits: the quotas.
    :param max_mailboxes: recipients kept at most; the cache is emptied (and reloaded on
        demand) beyond that, which only costs queries.
    """

    def __init__(
        self,
        limits: QueueLimits,
        max_mailboxes: int = 100_000,
    ) -> None:
        self.limits = limits
        self._max = max_mailboxes
        self._boxes: dict[str, _Mailbox] = {}

    def _box(self, recipient: str, load: Loader) -> _Mailbox:
        box = self._boxes.get(recipient)
        if box is None:
            if len(self._boxes) >= self._max:
                self._boxes.clear()
            box = self._boxes[recipient] = _Mailbox(load(recipient))
        return box

    def admit(self, wanted: Wanted, load: Loader) -> QueueFull | None:
        """Check one call against every limit and, if it fits, count it; else the error.

        All or nothing: a call that does not fit changes no counter. ``load`` reads a
        recipient's rows from the store the first time the recipient is seen.
        """
        lim = self.limits
        # First pass: sums per recipient and per pair, checked against the limits.
        per_box: dict[str, list[int]] = {}
        for (recipient, sender, stranger), (n, size) in wanted.items():
            box = self._box(recipient, load)
            pair = box.pairs.get(sender)
            have_n, have_size = (pair.count, pair.size) if pair is not None else (0, 0)
            if stranger:
                if have_n + n > lim.stranger_limit or have_size + size > lim.stranger_bytes:
                    return QueueFull(recipient)
            elif have_n + n > lim.sender_limit or have_size + size > lim.sender_bytes:
                return QueueFull(recipient)
            sums = per_box.setdefault(recipient, [0, 0, 0, 0])
            sums[0] += n
            sums[1] += size
            if stranger:
                # A pair counted as contact so far moves to the strangers' share now.
                moved_n, moved_size = (
                    (0, 0) if pair is None or pair.stranger else (have_n, have_size)
                )
                sums[2] += n + moved_n
                sums[3] += size + moved_size
        for recipient, (n, size, s_n, s_size) in per_box.items():
            box = self._boxes[recipient]
            if box.count + n > lim.queue_limit or box.size + size > lim.queue_bytes:
                return QueueFull(recipient)
            if s_n and (
                box.stranger_count + s_n > lim.strangers_limit
                or box.stranger_size + s_size > lim.strangers_bytes
            ):
                return QueueFull(recipient)
        for (recipient, sender, stranger), (n, size) in wanted.items():
            self._add(self._boxes[recipient], sender, stranger, n, size)
        return None

    @staticmethod
    def _add(box: _Mailbox, sender: str, stranger: bool, n: int, size: int) -> None:
        pair = box.pairs.get(sender)
        if pair is None:
            pair = box.pairs[sender] = _Pair()
        if pair.stranger != stranger:  # the relation changed: move the pair's share
            sign = 1 if stranger else -1
            box.stranger_count += sign * pair.count
            box.stranger_size += sign * pair.size
            pair.stranger = stranger
        pair.count += n
        pair.size += size
        box.count += n
        box.size += size
        if stranger:
            box.stranger_count += n
            box.stranger_size += size

    def forget(self, recipient: str) -> None:
        """``recipient``'s queue shrank (acknowledged, deleted): reload it when next needed."""
        self._boxes.pop(recipient, None)

    def clear(self) -> None:
        """Forget every recipient (a transaction failed, or envelopes expired)."""
        self._boxes.clear()

    def usage(self, recipient: str, load: Loader) -> tuple[int, int]:
        """``(envelopes, bytes)`` queued for ``recipient`` (tests, status)."""
        box = self._box(recipient, load)
        return box.count, box.size
