"""What one ``deliver`` batch owes in receipts, and the receipts it brought.

Kept out of the controller: per sender, one ``received`` receipt for every message that was
decrypted and stored, one ``failed`` receipt for every message no session could open (each
message id answered that way once per process, so a relay replaying it cannot make us fetch
bundles in a loop), and the peers' receipts for what we sent, handed to the send pump.
"""

from __future__ import annotations

from securechat import wire
from securechat.client.sending import Sender
from securechat.client.sessions import RECEIPT_FAILED, RECEIPT_RECEIVED, NoSession, Received


class DeliveryReceipts:
    """Collects one batch's receipts; :meth:`settle` queues them before the keystore save."""

    def __init__(self, told_failed: set[bytes]) -> None:
        self._told_failed = told_failed
        self._owed: dict[tuple[str, str, str], list[bytes]] = {}
        self._answers: list[tuple[str, str, tuple[bytes, ...]]] = []

    def not_decrypted(self, item: wire.DeliverItem, error: Exception) -> None:
        if isinstance(error, NoSession) and item.mid not in self._told_failed:
            self._told_failed.add(item.mid)
            self._owed.setdefault((item.sender, item.backend, RECEIPT_FAILED),
                                  []).append(item.mid)  # fmt: skip

    def decrypted(self, item: wire.DeliverItem, received: Received) -> bool:
        """Record a decrypted envelope; True if it was a receipt (nothing to show)."""
        if received.receipt is not None:
            self._answers.append((received.sender, *received.receipt))
            return True
        self._owed.setdefault((item.sender, item.backend, RECEIPT_RECEIVED),
                              []).append(item.mid)  # fmt: skip
        return False

    def settle(self, sender: Sender) -> bool:
        """Queue what we owe and apply what we got; True if the pump has work."""
        for (peer, backend, status), ids in self._owed.items():
            sender.owe_receipt(peer, backend, status, ids)
        for peer, status, answered in self._answers:
            sender.receipt_from(peer, status, answered)
        return bool(self._owed or self._answers)
