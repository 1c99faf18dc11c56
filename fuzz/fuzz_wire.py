"""Atheris harness for the wire protocol: the frame decoder and the server's framing.

The relay's promise for bad input (``docs``: architecture, "Bad input") is a typed error
reply or a clean disconnect of that one connection. In code that means:

1. :func:`securechat.wire.decode` lets only :class:`~securechat.wire.ProtocolError` escape,
   and what it accepts survives ``encode`` then ``decode`` unchanged;
2. a server connection (``RelayProtocol`` behind its ``Int32StringReceiver`` framing, on a
   ``StringTransport`` with a ``MemoryStore`` and a ``Clock``) raises nothing out of
   ``dataReceived``, logs no unexpected failure, never answers ``internal-error``, and
   writes only frames that the protocol's own decoder accepts.

Anything else is a bug, and the harness turns it into an exception so libFuzzer records
the input. Each input is used three ways: as one frame body for ``decode``; as the body
of one length-prefixed frame sent to a fresh connection; and as a raw byte stream to
another fresh connection (the seeds include whole register/login/send sessions, so
mutations reach the handlers behind the login). Every input gets a fresh server, so a
crash file reproduces on its own: ``.venv/bin/python fuzz/fuzz_wire.py CRASH_FILE``.

The checks are plain functions (:func:`check_decode`, :func:`check_stream`) so that
``tests/fuzz/test_fuzz_hypothesis.py`` runs the same oracles under pytest.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from any directory

from fuzz import instrumented  # noqa: E402

# Under libFuzzer (run as a script) the code under test is instrumented as it loads.
with instrumented(__name__ == "__main__", ["securechat", "twisted.protocols.basic"]):
    from twisted.internet import defer
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport
    from twisted.logger import globalLogPublisher

    from securechat import wire
    from securechat.config import StoreSection, config_from_mapping
    from securechat.server.auth import AuthService, make_portal
    from securechat.server.loginthrottle import LoginThrottle
    from securechat.server.passwords import (
        Argon2Params,
        HashParams,
        ScryptParams,
        hash_password,
    )
    from securechat.server.protocol import RelayFactory, build_factory
    from securechat.server.store.memory import MemoryStore

#: An admin account present in every fresh server, so mutated admin requests get past
#: the role check; the seed corpus logs in with it (``fuzz/make_corpus.py``).
ADMIN = "root"
PASSWORD = "fuzz-password-123"  # noqa: S105 (a fixed fuzzing account, not a secret)
#: Password hashing is not what is fuzzed here: the cheapest parameters keep execs/s high.
CHEAP = HashParams(Argon2Params(memory_kib=64, iterations=1, lanes=1), ScryptParams(4, 8, 1))
_HEADER = struct.Struct(">I")
_EXPORTER = b"\xee" * wire.EXPORTER_LENGTH


class WireBug(AssertionError):
    """The server or the decoder broke its contract; the message says which part."""


# -- 1. the decoder --------------------------------------------------------------------------


def check_decode(body: bytes) -> wire.Message | None:
    """Decode one frame body: only ProtocolError may escape, and accepted frames round-trip.

    :returns: the message, or None if the decoder refused the body (as it should, typed).
    """
    try:
        msg = wire.decode(body)
    except wire.ProtocolError as e:
        if not isinstance(e.code, str) or not e.code:
            raise WireBug(f"ProtocolError without a code: {e!r}") from e
        return None
    again = wire.decode(wire.encode(msg))
    if again != msg:
        raise WireBug(f"round trip changed the message: {msg!r} -> {again!r}")
    return msg


# -- 2. a server connection ---------------------------------------------------------------------


class _FixedInfo:
    """ConnectionInfo without TLS: a constant exporter value and no client certificate."""

    def exporter(self) -> bytes:
        return _EXPORTER

    def peer_cn(self) -> str | None:
        return None

    def handshake_done(self) -> bool:
        return True


def _inline(f: Any, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
    """A ThreadRunner on the calling thread: everything happens inside ``dataReceived``."""
    return defer.maybeDeferred(f, *args, **kwargs)


_CONFIG = config_from_mapping(
    {"server": {"port": 0}, "auth": {"methods": ["password", "publickey", "certificate"]}},
    Path("/nonexistent"),
    "fuzz.toml",
)
_ADMIN_HASH = hash_password(PASSWORD, _CONFIG.auth.password_hash, CHEAP)


def fresh_server() -> tuple[RelayFactory, Clock]:
    """A new relay (store, auth, rate limits) so that no input depends on an earlier one."""
    clock = Clock()
    clock.advance(1_700_000_000)
    store = MemoryStore(StoreSection(), clock=clock)
    store.add_user(ADMIN, "admin", _ADMIN_HASH, b"\x11" * 32)
    portal = make_portal(_CONFIG, store, _inline, params=CHEAP)
    throttle = LoginThrottle.from_config(_CONFIG.auth, clock.seconds)
    auth = AuthService(portal, throttle, clock, failure_delay=0)
    factory = build_factory(
        _CONFIG,
        store,
        clock,
        run_in_thread=_inline,
        auth_service=auth,
        hash_params=CHEAP,
        connection_info=lambda transport: _FixedInfo(),
    )
    return factory, clock


class _FailureWatch:
    """Collects ``log.failure`` events: the protocol logs one only for an unexpected error."""

    def __init__(self) -> None:
        self.failures: list[Any] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.failures.append(event["log_failure"])


def split_frames(data: bytes) -> list[bytes]:
    """The complete length-prefixed frame bodies in ``data`` (a trailing partial is ignored)."""
    frames, at = [], 0
    while len(data) - at >= _HEADER.size:
        (n,) = _HEADER.unpack_from(data, at)
        if len(data) - at - _HEADER.size < n:
            break
        frames.append(data[at + _HEADER.size : at + _HEADER.size + n])
        at += _HEADER.size + n
    return frames


def check_stream(stream: bytes) -> list[wire.Message]:
    """Feed ``stream`` to a fresh connection (in two chunks) and check what comes back.

    :returns: the frames the server wrote, decoded.
    """
    factory, clock = fresh_server()
    watch = _FailureWatch()
    globalLogPublisher.addObserver(watch)
    try:
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        cut = len(stream) // 2  # a frame split across reads must work like a whole one
        for chunk in (stream[:cut], stream[cut:]):
            if chunk and not proto._closed:
                proto.dataReceived(chunk)
            clock.advance(0)  # coalesced pushes and zero-delay calls
        proto.connectionLost()
        clock.advance(0)
    finally:
        globalLogPublisher.removeObserver(watch)
    if watch.failures:
        failure = watch.failures[0]
        raise WireBug(f"the server logged an unexpected failure: {failure.getTraceback()}")
    replies = []
    for body in split_frames(transport.value()):
        try:
            reply = wire.decode(body)
        except wire.ProtocolError as e:
            raise WireBug(f"the server wrote a frame its own decoder refuses ({e.code}: "
                          f"{e.message}): {body[:200].hex()}") from None  # fmt: skip
        if isinstance(reply, wire.Error) and reply.code == wire.E_INTERNAL:
            raise WireBug(f"the server answered internal-error to {stream[:200].hex()}")
        replies.append(reply)
    return replies


def check_input(data: bytes) -> None:
    """Everything one fuzz input is used for (see the module docstring)."""
    check_decode(data)
    check_stream(_HEADER.pack(len(data)) + data)
    check_stream(data)


def main() -> None:
    """libFuzzer entry point: ``python fuzz/fuzz_wire.py [libFuzzer flags] [corpus dirs]``."""
    import atheris  # only the fuzzing run needs it; the checks above import without it

    atheris.Setup(sys.argv, check_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
