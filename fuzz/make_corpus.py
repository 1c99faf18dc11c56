"""Write the seed corpora ``fuzz/corpus/wire`` and ``fuzz/corpus/envelope`` from valid inputs.

Coverage-guided fuzzers find deep bugs only from inputs that already get past the first
checks: random bytes almost never form a CBOR map with a known ``type`` and well-typed
fields, nor an envelope whose header is the one deterministic encoding. So the seeds are
valid frames and envelopes, made by the project's own encoders, and the fuzzer mutates
from there. The same seeds feed the hypothesis tests (``tests/fuzz``), which import
:func:`wire_seeds` and :func:`envelope_seeds` from here.

Everything is deterministic (fixed keys, ids and times), and files are named by the SHA-1
of their content as libFuzzer names its own, so running this again rewrites the same
files and leaves a clean tree: ``.venv/bin/python fuzz/make_corpus.py``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the repository root holds ``tools``

from fuzz.fuzz_wire import ADMIN, PASSWORD  # noqa: E402
from securechat import wire  # noqa: E402
from securechat.crypto.envelope import (  # noqa: E402
    TAG_SIZE,
    encode_envelope,
    encode_header_fields,
    pad,
)
from tools.gen_protocol_examples import examples  # noqa: E402

CORPUS = Path(__file__).resolve().parent / "corpus"
MID = bytes(range(16))


def _frames(*messages: wire.Message) -> bytes:
    return b"".join(wire.encode_frame(m) for m in messages)


def session_streams() -> list[bytes]:
    """Length-prefixed frame sequences that log in first, so post-login handlers are reached.

    The fuzz harness feeds each input to a fresh server connection as a raw byte stream;
    a stream that registers and logs in lets mutations explore send, ack, contacts, rooms
    and admin requests instead of stopping at "log in first".
    """
    register = wire.Register(id=1, user="alice", password=PASSWORD, identity_key=b"\x11" * 32)
    login = wire.LoginPassword(id=2, user="alice", password=PASSWORD)
    sends = wire.Send(
        id=3,
        items=(
            wire.SendItem("alice", "ecdh", MID, b"to myself"),
            wire.SendItem("bob", "ecdh", MID[::-1], b"to nobody"),
            wire.SendItem("alice", "ecdh", bytes(16), b"room", room="#ops"),
        ),
    )
    hello = wire.Hello(id=0, version=wire.PROTOCOL_VERSION, agent="fuzz")
    return [
        _frames(hello, register, login, sends, wire.Ack(up_to=1), wire.Who(id=4)),
        _frames(
            wire.Register(id=4, user="bob", password=PASSWORD, identity_key=b"\x12" * 32),
            register,
            login,
            wire.ContactRequest(id=5, user="bob"),
            wire.ContactList(id=6),
            wire.ContactRemove(id=7, user="bob"),
        ),
        _frames(
            register, login, wire.RoomList(id=7), wire.RoomMembers(id=8, room="#ops")
        ),
        _frames(
            register,
            login,
            wire.PublishPrekeys(
                id=9,
                backend="ecdh",
                signed_prekey=b"\x55" * 40,
                one_time=(wire.OneTimePrekey(1, b"\x66" * 32),),
            ),
            wire.FetchBundle(id=10, user="alice", backend="ecdh"),
        ),
        _frames(
            wire.LoginPassword(id=2, user=ADMIN, password=PASSWORD),
            wire.AdminList(id=11),
            wire.AdminAddUser(id=12, user="erin", role="user", password=PASSWORD),
            wire.AdminKick(id=13, user=ADMIN),
            wire.AdminRemoveUser(id=14, user="erin"),
        ),
        _frames(wire.PowChallenge(id=15), wire.LoginChallenge(id=16), wire.Ping(id=17)),
    ]


def wire_seeds() -> list[bytes]:
    """Frame bodies (one CBOR map each) for every message type, then whole sessions."""
    return [wire.encode(m) for m in examples()] + session_streams()


def _headers() -> list[bytes]:
    """Headers for each backend's key sizes, with and without the optional fields."""
    out = []
    for backend, rp_len, ct_len in (("ecdh:x25519", 32, 32), ("dh:ffdhe3072", 384, 384),
                                    ("rsa:3072", 422, 384), ("ecdh:p256", 65, 0)):  # fmt: skip
        for room, hs in ((None, None), ("ops", None), (None, b"\x77" * 120), ("ops", b"\x78")):
            rp, ct = b"\x21" * rp_len, b"\x31" * ct_len
            fields = (backend, "alice", "bob", rp, ct, 3, 7, MID, 1_700_000_000_000, room, hs)
            out.append(encode_header_fields(*fields))
    return out


def envelope_seeds() -> list[bytes]:
    """Whole envelopes (header and a ciphertext of a valid bucket size), then bare headers.

    The ciphertext is a fixed pattern, not a real AEAD output: parsing never decrypts, and
    the harness exercises parsing. Bare headers let the fuzzer reach ``decode_header``
    directly without first having to keep the envelope framing intact.
    """
    headers = _headers()
    bodies = [b"", b"hi", b"x" * 300, b"y" * 5000]
    envelopes = [
        encode_envelope(h, bytes([i]) * (len(pad(body)) + TAG_SIZE))
        for i, (h, body) in enumerate(zip(headers, bodies * 4, strict=True))
    ]
    return envelopes + headers


def write(directory: Path, seeds: list[bytes]) -> int:
    """Store each seed under its SHA-1; return how many files were new."""
    directory.mkdir(parents=True, exist_ok=True)
    new = 0
    for seed in seeds:
        path = directory / hashlib.sha1(seed).hexdigest()  # noqa: S324 (a name, not security)
        if not path.exists():
            path.write_bytes(seed)
            new += 1
    return new


def main() -> None:
    """Write both corpora and say how many seeds each holds."""
    for name, seeds in (("wire", wire_seeds()), ("envelope", envelope_seeds())):
        new = write(CORPUS / name, seeds)
        print(f"{CORPUS / name}: {len(seeds)} seeds ({new} new)")


if __name__ == "__main__":
    main()
