"""Signing room events in tests: one identity key per user, one chain per room."""

from __future__ import annotations

from securechat import wire
from securechat.crypto.identity import IdentityKeyPair


class RoomKit:
    """Makes signed room events for any user and follows each room's chain.

    Events are built on the chain as this kit knows it; :meth:`accepted` advances it (call
    it when the relay or the client took the event).
    """

    def __init__(self) -> None:
        self.keys: dict[str, IdentityKeyPair] = {}
        self.rosters: dict[str, wire.Roster] = {}

    def key(self, user: str) -> IdentityKeyPair:
        return self.keys.setdefault(user, IdentityKeyPair.generate())

    def public(self, user: str) -> bytes:
        return self.key(user).public_bytes()

    def event(
        self,
        room: str,
        actor: str,
        action: str,
        target: str | None = None,
        *,
        is_open: bool = False,
        key: bytes | None = None,
        seq: int | None = None,
        prev: bytes | None = None,
        signer: IdentityKeyPair | None = None,
        time: float = 1000.0,
    ) -> wire.SignedRoomEvent:
        roster = self.rosters.setdefault(room, wire.Roster(room))
        target = target or actor
        if key is None and action in (wire.CREATE, wire.JOIN):
            key = self.public(actor)
        elif key is None and action == wire.INVITE:
            key = self.public(target)
        ev = wire.RoomEvent(
            room=room, seq=roster.seq + 1 if seq is None else seq,
            prev=roster.head if prev is None else prev, actor=actor, action=action,
            target=target, time=time, key=key, open=is_open,
        )  # fmt: skip
        body = ev.to_body()
        sig = (signer or self.key(actor)).sign(wire.signed_payload(body))
        return wire.SignedRoomEvent(body, sig, ev)

    def accepted(self, signed: wire.SignedRoomEvent) -> None:
        self.rosters.setdefault(signed.event.room, wire.Roster(signed.event.room)).apply(signed)

    def make(self, room: str, actor: str, action: str, target: str | None = None,
             **kw: object) -> bytes:  # fmt: skip
        """An event that this kit takes as accepted at once; returns its blob."""
        signed = self.event(room, actor, action, target, **kw)  # type: ignore[arg-type]
        self.accepted(signed)
        return signed.blob
