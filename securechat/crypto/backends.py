"""One :class:`BackendSpec` per end-to-end backend: the single place a backend is described.

Why a table of plain data: the server's configuration, the client's command line, its key
publishing and its parsing of the ``be`` strings in headers and prekeys all need to know
which backends exist and how their parameters are written, but the server must not load
the crypto implementations. This module imports nothing from them; :mod:`securechat.crypto.kem`
imports each spec's ``module`` on first use (that module registers its factory). Adding a
backend is one entry here plus its module.

A backend id (the ``be`` field, :func:`securechat.crypto.header.backend_id`) is
``name:params``, e.g. ``ecdh:x25519``, ``dh:ffdhe3072``, ``rsa:rsa3072``, ``hybrid:xwing``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEFAULT_BACKEND",
    "SPECS",
    "BackendSpec",
    "backend_names",
    "parse_backend_id",
    "spec",
]


@dataclass(frozen=True)
class BackendSpec:
    """Everything outside a backend's module needs to know about it.

    :ivar name: registry name, as in configuration files and ``--backend``.
    :ivar module: the module whose import registers the KEM factory under ``name``.
    :ivar parse_params: the ``params`` half of a backend id -> factory keyword arguments;
        returns ``None`` for text that names no parameter set of this backend.
    :ivar client_params: what a client uses when it makes its own keys.
    :ivar one_time_target: one-time prekeys a client keeps published (fewer for backends
        whose key generation is slow, such as RSA).
    :ivar summary: one line for ``--help`` and the documentation.
    :ivar one_time_low: the server asks for more (``prekeys_low``) when fewer than this are
        left, and the client then tops up to ``one_time_target`` in one batch; below the
        target, so that a top-up is never one key per fetch.
    :ivar one_time_per_hour: one-time prekeys a client makes per hour at most (in the
        background), so that peers draining its pool cost it bounded CPU; when the pool is
        empty, peers still start sessions on the signed prekey.
    :ivar public_bytes: the smallest and largest public key of any parameter set, in bytes:
        the relay refuses published keys outside it (it checks sizes, not keys).
    """

    name: str
    module: str
    parse_params: Callable[[str], dict[str, Any] | None]
    client_params: Mapping[str, Any] = field(default_factory=dict)
    one_time_target: int = 50
    summary: str = ""
    one_time_low: int = 10
    one_time_per_hour: int = 500
    public_bytes: tuple[int, int] = (1, 2048)


def _ecdh(params: str) -> dict[str, Any] | None:
    return {"curve": params} if params else None


def _dh(params: str) -> dict[str, Any] | None:
    return {"group": params} if params else None


def _rsa(params: str) -> dict[str, Any] | None:
    digits = params[3:]
    if not params.startswith("rsa") or not digits.isdigit() or len(digits) > 5:
        return None
    return {"bits": int(digits)}


def _hybrid(params: str) -> dict[str, Any] | None:
    return {"kem": params} if params else None


SPECS: Final[Mapping[str, BackendSpec]] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "ecdh", "securechat.crypto.ecdh", _ecdh, {"curve": "x25519"}, 50,
            "DHKEM(X25519) or DHKEM(P-256), RFC 9180", public_bytes=(32, 65),
        ),
        BackendSpec(
            "dh", "securechat.crypto.dh", _dh, {"group": "ffdhe3072"}, 20,
            "finite-field DH (RFC 7919/3526 groups) as a DHKEM, legacy",
            one_time_low=5, one_time_per_hour=100, public_bytes=(128, 1024),
        ),
        BackendSpec(
            "rsa", "securechat.crypto.rsa", _rsa, {"bits": 3072}, 4,
            "RSA-OAEP-SHA256 key transport, no forward secrecy of its own",
            one_time_low=2, one_time_per_hour=12, public_bytes=(160, 1100),
        ),
        BackendSpec(
            "hybrid", "securechat.crypto.xwing", _hybrid, {"kem": "xwing"}, 50,
            "X-Wing: ML-KEM-768 + X25519 (draft-connolly-cfrg-xwing-kem), post-quantum",
            public_bytes=(1216, 1216),
        ),
    )
}

#: What a client uses for new sessions when neither the user nor the server says otherwise.
DEFAULT_BACKEND: Final = "ecdh"


def backend_names() -> tuple[str, ...]:
    """Every backend name, sorted."""
    return tuple(sorted(SPECS))


def spec(name: str) -> BackendSpec:
    """:raises KeyError: for a name no backend has."""
    try:
        return SPECS[name]
    except KeyError:
        raise KeyError(f"unknown key-agreement backend {name!r}") from None


def parse_backend_id(backend_id: str) -> tuple[str, dict[str, Any]]:
    """``"dh:ffdhe2048"`` -> ``("dh", {"group": "ffdhe2048"})``.

    :raises KeyError: unknown backend name or unparsable parameters (the factory still
        validates the values themselves, e.g. refuses an unknown curve).
    """
    name, _, params = backend_id.partition(":")
    parsed = spec(name).parse_params(params)
    if parsed is None:
        raise KeyError(f"unknown parameters in backend id {backend_id!r}")
    return name, parsed
