"""How the client cuts its outbox into ``send`` frames the server will take."""

from __future__ import annotations

from typing import Any

#: Per-item overhead on the wire besides the payload: names, message id, CBOR framing.
ITEM_OVERHEAD = 128


def plan_batches(
    todo: list[dict[str, Any]], max_batch: int, max_frame_bytes: int
) -> list[list[dict[str, Any]]]:
    """Split outbox entries, in order, into batches of at most ``max_batch`` items that stay
    well under ``max_frame_bytes``: a frame over the limit makes the server close the
    connection, and since the outbox is resent on reconnect that would loop forever."""
    max_items = max(1, min(256, max_batch))
    budget = max(4096, max_frame_bytes - 4096)
    batches: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for entry in todo:
        cost = len(entry["payload"]) + ITEM_OVERHEAD
        if current and (len(current) >= max_items or size + cost > budget):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += cost
    if current:
        batches.append(current)
    return batches
