"""Exceptions of the end-to-end protocol (prekeys, handshake, ratchet, envelope).

Each failure has its own class because the client reacts differently to each: an unknown or
expired prekey means "fetch a fresh bundle", a bad signature means "the key directory or the
relay is lying, warn the user", a duplicate means "drop silently", an authentication failure
means "drop and log". Every class derives from :class:`CryptoError`, so a caller that only
wants to drop a bad envelope catches one class. The docstrings are user-facing sentences.
"""

# The class names are the protocol's vocabulary (fixed by the design); an "Error" suffix on
# each would only add noise, so pep8-naming's N818 is off for this file.

from __future__ import annotations

from securechat.errors import SecureChatError

__all__ = [
    "AuthenticationFailed",
    "BackendMismatch",
    "BadPrekeySignature",
    "BadTranscriptSignature",
    "CryptoError",
    "DuplicateMessage",
    "ExpiredPrekey",
    "HandshakeError",
    "MalformedEnvelope",
    "MalformedHandshake",
    "MalformedPrekey",
    "MalformedState",
    "SessionMismatch",
    "TooManySkipped",
    "UnknownPrekey",
]


class CryptoError(SecureChatError):
    """An end-to-end encrypted message or key could not be processed."""


class MalformedEnvelope(CryptoError):
    """The encrypted message is malformed."""


class AuthenticationFailed(CryptoError):
    """The encrypted message failed authentication: it was altered or is not for this session."""


class DuplicateMessage(CryptoError):
    """This message was already received (or its key has been discarded)."""


class TooManySkipped(CryptoError):
    """The message is too far ahead of the last one received."""


class MalformedState(CryptoError):
    """The stored session state is malformed."""


class SessionMismatch(CryptoError):
    """The message belongs to a different session with this peer."""


class MalformedPrekey(CryptoError):
    """The published prekey is malformed."""


class HandshakeError(CryptoError):
    """The session could not be set up."""


class MalformedHandshake(HandshakeError):
    """The session set-up message is malformed."""


class UnknownPrekey(HandshakeError):
    """The prekey this session was set up with is unknown or already used."""


class ExpiredPrekey(HandshakeError):
    """The signed prekey has expired."""


class BadPrekeySignature(HandshakeError):
    """The signed prekey is not signed by the peer's identity key."""


class BadTranscriptSignature(HandshakeError):
    """The session set-up message is not signed by the sender's identity key."""


class BackendMismatch(HandshakeError):
    """The key-agreement backend of the prekey or message is not the expected one."""


class ReplayedHandshake(HandshakeError):
    """A first message already accepted once under the same signed prekey (a replay)."""
