"""Generate the example frames of ``docs/protocol.md`` from :mod:`securechat.wire`.

Run ``python tools/gen_protocol_examples.py`` to print the example section; the
documentation embeds its output between the ``<!-- examples:begin -->`` and
``<!-- examples:end -->`` markers, and ``tests/server/test_wire.py`` checks that every
frame there decodes to the message shown, so the document cannot drift from the code.
Run with ``--write`` to update ``docs/protocol.md`` in place.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from securechat import wire, wirecodec
from securechat.crypto.identity import IdentityKeyPair
from securechat.wiremessages import _DECODERS

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
BEGIN = "<!-- examples:begin -->"
END = "<!-- examples:end -->"
MID = bytes(range(16))


def _example_event() -> bytes:
    """alice creates the invite-only room #ops (a fixed key, so the bytes never change)."""
    alice = IdentityKeyPair.from_private_bytes(b"\x01" * 32)
    event = wire.RoomEvent(
        room="#ops", seq=1, prev=wire.GENESIS, actor="alice", action=wire.CREATE,
        target="alice", time=1700000000.5, key=alice.public_bytes(),
    )  # fmt: skip
    body = event.to_body()
    return wire.SignedRoomEvent(body, alice.sign(wire.signed_payload(body)), event).blob


EVENT = _example_event()


def examples() -> list[wire.Message]:
    """One representative instance of every message type, in registration order."""
    key = b"\x11" * 32
    sample: list[wire.Message] = [
        wire.Hello(id=1, version=wire.PROTOCOL_VERSION, agent="securechat-client/0.1"),
        wire.Welcome(
            id=1, version=1, server="securechat/0.1", backends=("ecdh", "dh", "rsa"),
            default_backend="ecdh", auth_methods=("password", "publickey"),
            registration=True, pow_bits=0, messaging="anyone", max_frame_bytes=1048576,
            max_envelope_bytes=65536, max_batch=wire.MAX_BATCH, max_room_members=256,
        ),
        wire.Ping(id=2),
        wire.Pong(id=2),
        wire.Ok(id=3),
        wire.Error(id=4, code="rate-limited", message="slow down", retry_after=0.5),
        wire.Bye(code="replaced", message="logged in from another connection"),
        wire.PowChallenge(id=5),
        wire.PowChallengeReply(id=5, challenge=b"\x22" * 32, bits=8),
        wire.Register(
            id=6, user="alice", password="correct horse", identity_key=key,  # noqa: S106
            pow_challenge=b"\x22" * 32, pow_solution=b"\0\0\0\0\0\0\0\x07",
        ),
        wire.Registered(id=6, user="alice"),
        wire.PowRequired(id=7, challenge=b"\x23" * 32, bits=18),
        wire.LoginPassword(
            id=7, user="alice", password="sclogin1:ZGVyaXZlZA",  # noqa: S106
            pow_challenge=b"\x23" * 32, pow_solution=b"\0\0\0\0\0\x01\x2c\x5e",
        ),
        wire.LoginChallenge(id=8),
        wire.LoginNonce(id=8, nonce=b"\x33" * 32),
        wire.LoginPublicKey(id=9, user="alice", nonce=b"\x33" * 32, signature=b"\x44" * 64),
        wire.LoginCertificate(id=10),
        wire.LoggedIn(id=10, user="alice", role="user"),
        wire.ChangePassword(id=11, old="sclogin1:old", new="sclogin1:new"),
        wire.PublishPrekeys(
            id=11, backend="ecdh", signed_prekey=b"\x55" * 40,
            one_time=(wire.OneTimePrekey(1, b"\x66" * 32), wire.OneTimePrekey(2, b"\x67" * 32)),
        ),
        wire.PrekeysStored(id=11, backend="ecdh", one_time_count=2),
        wire.PrekeysLow(backend="ecdh", remaining=3),
        wire.FetchBundle(id=12, user="bob", backend="ecdh"),
        wire.Bundle(
            id=12, user="bob", backend="ecdh", identity_key=key, signed_prekey=b"\x55" * 40,
            one_time_id=1, one_time_key=b"\x66" * 32,
        ),
        wire.Send(id=13, items=(wire.SendItem("bob", "ecdh", MID, b"ciphertext",
                                                identity=wire.identity_digest(b"K" * 32)),)),
        wire.SendReply(
            id=13,
            results=(
                wire.SendResult("delivered"),
                wire.SendResult("error", "rate-limited", 0.25),
            ),
        ),
        wire.Deliver(
            items=(wire.DeliverItem(41, "alice", "ecdh", MID, 1700000000.5, b"ciphertext"),)
        ),
        wire.Ack(up_to=41),
        wire.Presence(user="bob", online=True),
        wire.Who(id=14),
        wire.Online(id=14, users=("bob", "carol")),
        wire.ContactRequest(id=15, user="bob"),
        wire.ContactAccept(id=16, user="carol"),
        wire.ContactRemove(id=17, user="dave"),
        wire.ContactState(id=15, user="bob", state="pending-out"),
        wire.ContactUpdate(user="alice", state="pending-in"),
        wire.ContactList(id=18),
        wire.Contacts(id=18, contacts=(wire.Contact("bob", "accepted"),)),
        wire.RoomPost(id=19, room="#ops", event=EVENT),
        wire.RoomSync(id=20, room="#ops", after=0),
        wire.RoomEvents(id=20, room="#ops", events=(EVENT,)),
        wire.RoomEventPush(room="#ops", event=EVENT),
        wire.RoomList(id=26),
        wire.Rooms(id=26, rooms=(wire.RoomInfo("#ops", "member", 1),)),
        wire.RoomMembers(id=21, room="#ops"),
        wire.Room(id=21, room="#ops", members=("alice", "bob")),
        wire.RoomUpdate(room="#ops", user="carol", joined=True),
        wire.AdminList(id=22),
        wire.AdminUsers(id=22, users=(wire.UserInfo("alice", "admin", True),)),
        wire.AdminAddUser(id=23, user="erin", role="user", password="initial secret"),  # noqa: S106
        wire.AdminRemoveUser(id=24, user="erin"),
        wire.AdminKick(id=25, user="mallory"),
    ]  # fmt: skip
    return sample


_C = wirecodec
#: How each field check reads in the documentation.
FIELD_TYPES = {
    _C.ID: "uint (0 to 2^63-1)",
    _C.COUNT: "uint (0 to 2^32-1)",
    _C.NAME: f"text, 1 to {_C.MAX_NAME} chars",
    _C.TEXT: f"text, at most {_C.MAX_TEXT} chars",
    _C.SECRET: f"text, 1 to {_C.MAX_TEXT} chars",
    _C.KEY: f"bytes, at most {_C.MAX_KEY}",
    _C.NONCE: f"bytes, exactly {_C.LOGIN_NONCE_BYTES}",
    _C.CHALLENGE: f"bytes, exactly {_C.POW_CHALLENGE_BYTES}",
    _C.BOOL: "bool",
    _C.FLOAT: "number >= 0 (float or uint)",
    _C.NAMES: f"array of names (at most {_C.MAX_LIST})",
    _C.ONE_TIME: f"array (at most {_C.MAX_ONE_TIME}) of one-time prekey maps",
    _C.CONTACTS: f"array (at most {_C.MAX_LIST}) of contact maps",
    _C.USERS: f"array (at most {_C.MAX_LIST}) of user maps",
    _C.SEND_ITEMS: f"array (at most {_C.MAX_BATCH}) of send items",
    _C.DELIVER_ITEMS: f"array (at most {_C.MAX_BATCH}) of deliver items",
    _C.RESULTS: f"array (at most {_C.MAX_BATCH}) of send results",
    _C.ROOM_EVENT: f"bytes, at most {_C.MAX_ROOM_EVENT_BYTES} (a signed room event)",
    _C.ROOM_EVENTS: f"array (at most {_C.MAX_ROOM_EVENTS}) of signed room events",
    _C.ROOM_INFOS: f"array (at most {_C.MAX_LIST}) of room maps",
}


def field_table(kind: str) -> list[str]:
    """A markdown table of the fields of message type ``kind``."""
    _, spec = _DECODERS[kind]
    rows = ["| field | type | |", "|---|---|---|", f'| `type` | text `"{kind}"` | required |']
    for name, check, optional in spec:
        need = "optional" if optional else "required"
        rows.append(f"| `{name}` | {FIELD_TYPES[check]} | {need} |")
    return rows


def render() -> str:
    """The markdown section: each type's docstring, field table, and example frame in hex."""
    out = [BEGIN, ""]
    for msg in examples():
        frame = wire.encode_frame(msg)
        out.append(f"#### `{msg.TYPE}`")
        out.append("")
        out.append(re.sub(r":\w+:`([^`]+)`", r"`\1`", (type(msg).__doc__ or "").strip()))
        out.append("")
        out.extend(field_table(msg.TYPE))
        out.append("")
        out.append("```")
        out.append(repr(msg))
        out.append("```")
        out.append("")
        out.append("```hex")
        hexed = frame.hex()
        out.extend(hexed[i : i + 96] for i in range(0, len(hexed), 96))
        out.append("```")
        out.append("")
    out.append(END)
    return "\n".join(out)


def extract(text: str) -> list[bytes]:
    """The hex frames of the example section of a rendered document, in order."""
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    frames = []
    for block in section.split("```hex\n")[1:]:
        frames.append(bytes.fromhex(block.split("```", 1)[0].replace("\n", "")))
    return frames


def main(argv: list[str]) -> int:
    """Print the section, or with ``--write`` replace it in ``docs/protocol.md``."""
    section = render()
    if "--write" in argv:
        text = DOC.read_text(encoding="utf-8")
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(head + section + tail, encoding="utf-8")
    else:
        sys.stdout.write(section + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
