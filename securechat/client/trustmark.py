"""How far a peer's identity key is trusted, as one word and as the mark people see.

- ``verified`` (``bob ✓``): the user compared the safety number (``/verify``) and
  ``/trust``-ed this key, and no other key has turned up since;
- ``pinned`` (``bob``): the first key seen for bob, trusted on first use, not compared;
- ``changed`` (``bob !``): bob's key is not the first one seen (re-installed, another
  device, or someone in the middle) and has not been verified since: compare the safety
  number before trusting what bob says;
- ``unknown`` (``bob ?``): no key pinned yet.
"""

from __future__ import annotations

from securechat.client.keystore import KeystoreState

MARKS = {"verified": " \u2713", "pinned": "", "changed": " !", "unknown": " ?"}


def trust_state(state: KeystoreState, peer: str) -> str:
    """``verified``, ``pinned``, ``changed`` or ``unknown`` for ``peer``."""
    pin = state.pins.get(peer)
    if pin is None:
        return "unknown"
    if state.extra.get(f"pending:{peer}") is not None or state.extra.get(f"blocked:{peer}"):
        return "changed"
    if pin.verified:
        return "verified"
    return "changed" if pin.changed_from is not None else "pinned"


def mark(trust: str | None, verified: bool = False) -> str:
    """The suffix shown after a peer's name (``" ✓"``, ``""``, ``" !"``, ``" ?"``)."""
    if trust is None:
        return MARKS["verified"] if verified else ""
    return MARKS.get(trust, " ?")
