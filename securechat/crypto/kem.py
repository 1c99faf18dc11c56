"""The key-encapsulation interface every end-to-end backend implements, and their registry.

One handshake and one ratchet serve all backends because each is reduced to a KEM:
``encapsulate(public) -> (secret, enc)`` and ``decapsulate(private, enc) -> secret``.
Classic DH and ECDH become KEMs the way HPKE's DHKEM does it (an ephemeral key pair whose
public half is ``enc``); RSA becomes one by OAEP-wrapping a random 32-byte secret.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from zope.interface import Attribute, Interface

from securechat.crypto.backends import SPECS, parse_backend_id


class KemError(ValueError):
    """A public key, private key or encapsulation was rejected."""


@dataclass(frozen=True)
class KeyPair:
    """A backend key pair in its serialised form (``private`` is secret: never log it)."""

    public: bytes
    private: bytes


class IKem(Interface):
    """A key-encapsulation mechanism with validated, serialised keys."""

    name = Attribute("Registry name, a key of :data:`securechat.crypto.backends.SPECS`.")
    params = Attribute("Parameter name, e.g. 'ffdhe3072', 'x25519', 'rsa3072', 'xwing'.")
    secret_size = Attribute("Length in bytes of the shared secrets produced.")
    rotates_every_turn = Attribute(
        "True when key generation is cheap enough to ratchet on every turn (False for RSA)."
    )

    def generate_keypair() -> KeyPair:
        """Make a fresh key pair."""

    def validate_public(public: bytes) -> None:
        """Raise :class:`KemError` unless ``public`` is an acceptable public key."""

    def encapsulate(public: bytes) -> tuple[bytes, bytes]:
        """Return ``(shared_secret, encapsulation)`` for the holder of ``public``."""

    def decapsulate(private: bytes, enc: bytes) -> bytes:
        """Recover the shared secret from ``enc``; raise :class:`KemError` if invalid."""


KemFactory = Callable[..., IKem]
_REGISTRY: dict[str, KemFactory] = {}


def register(name: str, factory: KemFactory) -> None:
    """Make a backend available under ``name`` (done by each backend module)."""
    _REGISTRY[name] = factory


def backend_names() -> tuple[str, ...]:
    """Names of all registered backends, sorted."""
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def kem_for_id(backend_id: str) -> IKem:
    """Build the KEM a ``be`` string names (``"dh:ffdhe2048"``, ``"hybrid:xwing"``).

    :raises KeyError: unknown backend or unparsable parameters.
    :raises KemError: parameters the backend refuses.
    """
    name, params = parse_backend_id(backend_id)
    return get_kem(name, params)


def get_kem(name: str, params: Mapping[str, Any] | None = None) -> IKem:
    """Build the backend ``name`` with its parameters (e.g. ``{"group": "ffdhe3072"}``).

    :raises KeyError: for an unknown backend name.
    :raises KemError: for parameters the backend refuses (e.g. RSA below 2048 bits).
    """
    _load_builtin()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown key-agreement backend {name!r}") from None
    return factory(**dict(params or {}))


def _load_builtin() -> None:
    """Import the modules :data:`~securechat.crypto.backends.SPECS` names, which register
    themselves; an explicit list, never a scan of ``sys.path``."""
    for backend in SPECS.values():
        importlib.import_module(backend.module)
