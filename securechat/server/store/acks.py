# -*- test-case-name: tests.server.test_store_acks -*-
"""Coalesced acknowledgements waiting to be written, with back-off after failures.

The SQLite store applies acknowledgements lazily, inside the next group commit (see
:mod:`securechat.server.store.sqlite`). When the transaction carrying them fails (disk
full, I/O error), retrying them inside *every* following commit would make each commit
fail the same way, sends included, and log once per commit. So after a failure they leave
the group commit: they are retried on their own, after a delay that doubles with each
failure (:data:`FIRST_RETRY` up to :data:`MAX_RETRY`), until one transaction succeeds.
"""

from __future__ import annotations

#: Seconds before the first retry of acknowledgements whose transaction failed.
FIRST_RETRY = 0.25
#: Longest wait between two retries.
MAX_RETRY = 2.0


class PendingAcks:
    """Highest acknowledged ``seq`` per recipient, not yet written; pure bookkeeping."""

    def __init__(self) -> None:
        #: Not yet in a transaction.
        self.waiting: dict[str, int] = {}
        #: In the transaction in flight.
        self.applying: dict[str, int] = {}
        #: Transactions with acknowledgements that failed in a row (0: all is well).
        self.failures = 0

    def __bool__(self) -> bool:
        return bool(self.waiting)

    def __len__(self) -> int:
        return len(self.waiting)

    def note(self, recipient: str, up_to_seq: int) -> bool:
        """Record an acknowledgement; False if an equal or later one is already known."""
        if up_to_seq <= self.waiting.get(recipient, 0):
            return False
        self.waiting[recipient] = up_to_seq
        return True

    def acked(self, recipient: str) -> int:
        """The highest seq ``recipient`` acknowledged that may not be deleted yet."""
        return max(self.waiting.get(recipient, 0), self.applying.get(recipient, 0))

    @property
    def backing_off(self) -> bool:
        """Acknowledgements failed last time: keep them out of group commits."""
        return self.failures > 0

    def take(self) -> list[tuple[str, int]]:
        """Move the waiting acknowledgements into the transaction being built."""
        self.applying, self.waiting = self.waiting, {}
        return list(self.applying.items())

    def succeeded(self) -> int:
        """The transaction committed; returns how many failures in a row this ends."""
        failures, self.failures = self.failures, 0
        self.applying = {}
        return failures

    def failed(self) -> None:
        """The transaction failed: its acknowledgements wait again, for a retry."""
        applying, self.applying = self.applying, {}
        if applying:
            self.failures += 1
        for recipient, seq in applying.items():
            self.note(recipient, seq)

    def give_up(self) -> int:
        """Drop what is waiting (the store is stopping); returns how many recipients."""
        n = len(self.waiting)
        self.waiting = {}
        return n

    def retry_delay(self) -> float:
        """Seconds until the next try on its own (grows with each failure)."""
        return float(min(MAX_RETRY, FIRST_RETRY * 2.0 ** max(0, self.failures - 1)))
