# -*- test-case-name: tests.server.test_auth -*-
"""Password hashing for the relay: Argon2id (RFC 9106) and scrypt (RFC 7914), PHC strings.

Why these choices (see ``security-notes`` 2.7, quoting the OWASP Password Storage Cheat
Sheet): a memory-hard function with a per-user random salt, parameters stored with each
hash so they can be raised later without breaking old accounts.

- Argon2id default: m = 64 MiB, t = 3, p = 4, RFC 9106's second recommended profile
  (about 0.15 s on the reference 2-core machine), above OWASP's minimum m = 19 MiB, t = 2,
  p = 1.
- scrypt default: N = 2^17, r = 8, p = 1 (OWASP's figure when Argon2id is not used).

Stored form (PHC string format; salt and hash in unpadded standard base64)::

    $argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>
    $scrypt$ln=17,r=8,p=1$<salt>$<hash>

The stored string is read back from a database that an attacker may have tampered with,
so :func:`verify_password` parses it strictly and refuses parameters outside
:data:`DEFAULT_LIMITS` (otherwise one edited row could make each login cost minutes of CPU
or gigabytes of memory). Passwords are normalised to Unicode NFC before hashing (RFC 8265
OpaqueString), so the same password typed on different systems gives the same bytes.

Hashing is slow on purpose, so callers run these functions on a thread
(:data:`ThreadRunner`, normally ``twisted.internet.threads.deferToThread``), never on the
reactor thread. Nothing here logs: a password, a salt or a hash must never reach a log.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from twisted.internet.defer import Deferred

#: Runs a blocking function off the reactor thread: ``runner(f, *args) -> Deferred``.
#: ``deferToThread`` in production; tests pass a synchronous runner.
ThreadRunner: TypeAlias = Callable[..., Deferred[Any]]

SALT_BYTES = 16
HASH_BYTES = 32
ARGON2_VERSION = 19


class UnsupportedHash(ValueError):
    """The stored password hash is malformed or its parameters are outside safe bounds."""


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost: memory in KiB, passes, lanes (RFC 9106 section 3.1: m, t, p)."""

    memory_kib: int
    iterations: int
    lanes: int


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost (RFC 7914 section 2): ``N = 2**log2_n``, block size ``r``, parallelism ``p``."""

    log2_n: int
    r: int
    p: int


@dataclass(frozen=True)
class HashParams:
    """The cost parameters used for new hashes, one set per scheme."""

    argon2id: Argon2Params
    scrypt: ScryptParams


#: Production parameters. Tests pass a cheap :class:`HashParams` explicitly instead of
#: changing this object, so a test setting can never leak into a running server.
#: One lane: OpenSSL (cryptography 50, OpenSSL 4.0) starts internal threads for lanes > 1,
#: and two such derivations at once on the relay's thread pool can hang for good. 64 MiB
#: and t=3 with p=1 stays above the OWASP minimum (19 MiB, t=2, p=1).
DEFAULT_PARAMS = HashParams(
    argon2id=Argon2Params(memory_kib=64 * 1024, iterations=3, lanes=1),
    scrypt=ScryptParams(log2_n=17, r=8, p=1),
)


@dataclass(frozen=True)
class HashLimits:
    """Upper bounds on what a stored hash may ask for; the lower bounds are RFC minimums."""

    max_argon2_memory_kib: int = 256 * 1024
    max_argon2_iterations: int = 10
    max_argon2_lanes: int = 16
    #: memory x passes, i.e. total work; 1 GiB-pass is about 16x the default profile.
    max_argon2_work_kib: int = 1024 * 1024
    max_scrypt_log2_n: int = 20
    max_scrypt_r: int = 32
    max_scrypt_p: int = 16
    #: scrypt memory is 128 * r * N bytes (RFC 7914 section 2); 256 MiB.
    max_scrypt_memory: int = 256 << 20
    min_salt_bytes: int = 8
    max_salt_bytes: int = 64
    min_hash_bytes: int = 16
    max_hash_bytes: int = 64


DEFAULT_LIMITS = HashLimits()

SCHEMES = ("argon2id", "scrypt")

_B64 = "[A-Za-z0-9+/]{8,128}"
_INT = "(0|[1-9][0-9]{0,9})"
_ARGON2_RE = re.compile(
    rf"\$argon2id\$v={_INT}\$m={_INT},t={_INT},p={_INT}\$({_B64})\$({_B64})", re.ASCII
)
_SCRYPT_RE = re.compile(rf"\$scrypt\$ln={_INT},r={_INT},p={_INT}\$({_B64})\$({_B64})", re.ASCII)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    if len(text) % 4 == 1:
        raise UnsupportedHash("bad base64 length")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise UnsupportedHash("bad base64") from None


def _password_bytes(password: str) -> bytes:
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


#: Serialises multi-lane Argon2id derivations (stored hashes with p > 1, e.g. imported):
#: concurrent ones deadlock inside OpenSSL's thread pool (see :data:`DEFAULT_PARAMS`).
_MULTI_LANE = threading.Lock()


def _argon2(password: bytes, salt: bytes, params: Argon2Params, length: int) -> bytes:
    if params.lanes > 1:
        with _MULTI_LANE:
            return _argon2_derive(password, salt, params, length)
    return _argon2_derive(password, salt, params, length)


def _argon2_derive(password: bytes, salt: bytes, params: Argon2Params, length: int) -> bytes:
    kdf = Argon2id(
        salt=salt,
        length=length,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    return kdf.derive(password)


def _scrypt(password: bytes, salt: bytes, params: ScryptParams, length: int) -> bytes:
    kdf = Scrypt(salt=salt, length=length, n=1 << params.log2_n, r=params.r, p=params.p)
    return kdf.derive(password)


def _format(scheme: str, params: HashParams, salt: bytes, digest: bytes) -> str:
    if scheme == "argon2id":
        a = params.argon2id
        cost = f"v={ARGON2_VERSION}$m={a.memory_kib},t={a.iterations},p={a.lanes}"
    elif scheme == "scrypt":
        s = params.scrypt
        cost = f"ln={s.log2_n},r={s.r},p={s.p}"
    else:
        raise ValueError(f"unknown password hash scheme {scheme!r}")
    return f"${scheme}${cost}${_b64encode(salt)}${_b64encode(digest)}"


def hash_password(password: str, scheme: str, params: HashParams = DEFAULT_PARAMS) -> str:
    """Hash ``password`` with a fresh 16-byte random salt; returns a PHC string.

    Blocking (tens to hundreds of milliseconds by design): call it through a
    :data:`ThreadRunner`.

    :param scheme: ``"argon2id"`` or ``"scrypt"`` (``[auth] password_hash``).
    :param params: cost parameters; production code keeps :data:`DEFAULT_PARAMS`.
    :raises ValueError: for an unknown scheme.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown password hash scheme {scheme!r}")
    salt = os.urandom(SALT_BYTES)
    pw = _password_bytes(password)
    if scheme == "argon2id":
        digest = _argon2(pw, salt, params.argon2id, HASH_BYTES)
    else:
        digest = _scrypt(pw, salt, params.scrypt, HASH_BYTES)
    return _format(scheme, params, salt, digest)


@dataclass(frozen=True)
class ParsedHash:
    """A stored hash taken apart; ``params`` holds the cost of its own scheme."""

    scheme: str
    params: Argon2Params | ScryptParams
    salt: bytes
    digest: bytes


def parse_hash(stored: str, limits: HashLimits = DEFAULT_LIMITS) -> ParsedHash:
    """Parse and bound-check a stored PHC string.

    :raises UnsupportedHash: if the string is malformed, of an unknown scheme or
        version, or asks for parameters outside ``limits`` or below the RFC minimums
        (RFC 9106 section 3.1: ``m >= 8 p``; RFC 7914 section 2: ``N > 1``).
    """
    if m := _ARGON2_RE.fullmatch(stored):
        version, mem, t, p = (int(g) for g in m.group(1, 2, 3, 4))
        a = Argon2Params(memory_kib=mem, iterations=t, lanes=p)
        if version != ARGON2_VERSION:
            raise UnsupportedHash("unsupported Argon2 version")
        if not (
            1 <= a.lanes <= limits.max_argon2_lanes
            and 1 <= a.iterations <= limits.max_argon2_iterations
            and 8 * a.lanes <= a.memory_kib <= limits.max_argon2_memory_kib
            and a.memory_kib * a.iterations <= limits.max_argon2_work_kib
        ):
            raise UnsupportedHash("Argon2id parameters out of bounds")
        parsed = ParsedHash("argon2id", a, _b64decode(m.group(5)), _b64decode(m.group(6)))
    elif m := _SCRYPT_RE.fullmatch(stored):
        ln, r, p = (int(g) for g in m.group(1, 2, 3))
        s = ScryptParams(log2_n=ln, r=r, p=p)
        if not (
            1 <= s.log2_n <= limits.max_scrypt_log2_n
            and 1 <= s.r <= limits.max_scrypt_r
            and 1 <= s.p <= limits.max_scrypt_p
            and 128 * s.r * (1 << s.log2_n) <= limits.max_scrypt_memory
        ):
            raise UnsupportedHash("scrypt parameters out of bounds")
        parsed = ParsedHash("scrypt", s, _b64decode(m.group(4)), _b64decode(m.group(5)))
    else:
        raise UnsupportedHash("not a supported password hash string")
    if not limits.min_salt_bytes <= len(parsed.salt) <= limits.max_salt_bytes:
        raise UnsupportedHash("salt length out of bounds")
    if not limits.min_hash_bytes <= len(parsed.digest) <= limits.max_hash_bytes:
        raise UnsupportedHash("hash length out of bounds")
    return parsed


def verify_password(stored: str, password: str, limits: HashLimits = DEFAULT_LIMITS) -> bool:
    """Recompute the hash of ``password`` with the salt and cost in ``stored``; compare.

    The comparison is constant-time (``hmac.compare_digest``). Blocking: call it through
    a :data:`ThreadRunner`.

    :raises UnsupportedHash: if ``stored`` is malformed or out of bounds (see
        :func:`parse_hash`); the caller denies the login and tells the operator.
    """
    parsed = parse_hash(stored, limits)
    pw = _password_bytes(password)
    n = len(parsed.digest)
    if isinstance(parsed.params, Argon2Params):
        computed = _argon2(pw, parsed.salt, parsed.params, n)
    else:
        computed = _scrypt(pw, parsed.salt, parsed.params, n)
    return hmac.compare_digest(computed, parsed.digest)


def needs_rehash(stored: str, scheme: str, params: HashParams = DEFAULT_PARAMS) -> bool:
    """True when ``stored`` was made with another scheme or other cost than configured.

    After a successful login the caller may re-hash the password it just verified, which
    is how raised parameters reach existing accounts.
    """
    try:
        parsed = parse_hash(stored)
    except UnsupportedHash:
        return True
    wanted = params.argon2id if scheme == "argon2id" else params.scrypt
    return parsed.scheme != scheme or parsed.params != wanted or len(parsed.salt) < SALT_BYTES


def params_memory_kib(scheme: str, params: HashParams = DEFAULT_PARAMS) -> int:
    """Memory one new hash with ``scheme`` and ``params`` holds while it runs, in KiB."""
    if scheme == "argon2id":
        return params.argon2id.memory_kib
    s = params.scrypt
    return 128 * s.r * (1 << s.log2_n) // 1024


def hash_memory_kib(stored: str) -> int:
    """Memory verifying ``stored`` holds while it runs, in KiB.

    :raises UnsupportedHash: as :func:`parse_hash`.
    """
    p = parse_hash(stored).params
    if isinstance(p, Argon2Params):
        return p.memory_kib
    return 128 * p.r * (1 << p.log2_n) // 1024


def dummy_hash(scheme: str, params: HashParams = DEFAULT_PARAMS) -> str:
    """A well-formed hash that no password matches, costing as much as a real one.

    Verifying an unknown user's login against it makes "no such user" take as long as
    "wrong password", so timing does not reveal which accounts exist. Its digest is
    random bytes rather than the hash of anything, so making it costs nothing.
    """
    return _format(scheme, params, os.urandom(SALT_BYTES), os.urandom(HASH_BYTES))
