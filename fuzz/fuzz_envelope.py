"""Atheris harness for the end-to-end envelope parser (``securechat.crypto.envelope``).

A receiving client parses every envelope the relay hands it before anything is
authenticated, so the parser is attack surface: whatever the bytes, the documented outcome
is a header or :class:`~securechat.crypto.errors.MalformedEnvelope` ("decoding refuses any
other encoding of the same map"). The harness checks, for each input:

* ``parse_envelope``, ``routing_fields``, ``decode_header`` and ``unpad`` let only
  ``MalformedEnvelope`` escape;
* a header that decodes is the *one* deterministic encoding of its fields: both
  ``encode_header`` and the per-chain ``HeaderEncoder`` reproduce the input byte for byte
  (the module promises "one message has exactly one valid byte string", which is what
  makes the AEAD's associated data unambiguous);
* ``routing_fields`` agrees with the parsed header.

Run a crash file alone with ``.venv/bin/python fuzz/fuzz_envelope.py CRASH_FILE``; the
checks are plain functions so ``tests/fuzz/test_fuzz_hypothesis.py`` reuses them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from any directory

from fuzz import instrumented  # noqa: E402

# Under libFuzzer (run as a script) the code under test is instrumented as it loads.
with instrumented(__name__ == "__main__", ["securechat"]):
    from securechat.crypto.envelope import (
        Header,
        HeaderEncoder,
        decode_header,
        encode_header,
        parse_envelope,
        routing_fields,
        unpad,
    )
    from securechat.crypto.errors import MalformedEnvelope


class EnvelopeBug(AssertionError):
    """The envelope code broke its contract; the message says which part."""


def check_header(data: bytes) -> Header | None:
    """``decode_header``: a header that re-encodes to exactly ``data``, or MalformedEnvelope."""
    try:
        header = decode_header(data)
    except MalformedEnvelope:
        return None
    if encode_header(header) != data:
        raise EnvelopeBug(f"two encodings of one header are accepted: {data.hex()}")
    chain = HeaderEncoder(
        header.backend,
        header.sender,
        header.recipient,
        header.ratchet_pub,
        header.kem_ct,
        header.pn,
        header.handshake,
    )
    if chain.encode(header.n, header.message_id, header.timestamp, header.room) != data:
        raise EnvelopeBug(f"HeaderEncoder disagrees with decode_header: {data.hex()}")
    return header


def check_envelope(data: bytes) -> Header | None:
    """``parse_envelope`` and ``routing_fields``: consistent results or MalformedEnvelope."""
    try:
        header, header_bytes, ciphertext = parse_envelope(data)
    except MalformedEnvelope:
        try:
            routing_fields(data)
        except MalformedEnvelope:
            return None
        raise EnvelopeBug(
            f"routing_fields accepts what parse_envelope refuses: {data.hex()}"
        ) from None
    if header_bytes + ciphertext != data[3:]:
        raise EnvelopeBug(f"parse_envelope lost or invented bytes: {data.hex()}")
    if check_header(header_bytes) != header:
        raise EnvelopeBug(f"the header parses differently alone: {data.hex()}")
    if routing_fields(data) != (header.recipient, header.backend, header.message_id):
        raise EnvelopeBug(f"routing_fields disagrees with the header: {data.hex()}")
    return header


def check_unpad(data: bytes) -> None:
    """``unpad`` strips exactly the ISO/IEC 7816-4 padding, or raises MalformedEnvelope."""
    try:
        plain = unpad(data)
    except MalformedEnvelope:
        return
    rest = data[len(plain) :]
    if not rest or rest != b"\x80" + bytes(len(rest) - 1):
        raise EnvelopeBug(f"unpad removed something that is not padding: {data.hex()}")


def check_input(data: bytes) -> None:
    """Everything one fuzz input is used for (see the module docstring)."""
    check_envelope(data)
    check_header(data)
    check_unpad(data)


def main() -> None:
    """libFuzzer entry point: ``python fuzz/fuzz_envelope.py [libFuzzer flags] [corpus dirs]``."""
    import atheris  # only the fuzzing run needs it; the checks above import without it

    atheris.Setup(sys.argv, check_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
