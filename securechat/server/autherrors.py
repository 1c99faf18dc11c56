"""The relay's authentication and registration errors, each with a stable wire ``code``.

They live apart from :mod:`securechat.server.auth` so that the registration rules
(:mod:`securechat.server.registration`) and the cred checkers can share them without an
import cycle; the protocol maps ``code`` straight into its typed ``error`` replies.
"""

from __future__ import annotations

from twisted.cred.error import UnauthorizedLogin

from securechat.errors import SecureChatError


class AuthError(SecureChatError):
    """The server refused the request."""

    code = "auth-error"


class BadCredentials(AuthError, UnauthorizedLogin):
    """Unknown user or wrong credentials."""

    code = "bad-credentials"


class MethodNotAllowed(AuthError):
    """This login method is not enabled on this server."""

    code = "method-not-allowed"


class Throttled(AuthError):
    """Too many failed logins; try again later."""

    code = "throttled"

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class ProofOfWorkRequired(AuthError):
    """This account had too many failed logins from unknown addresses: solve a proof of
    work of ``bits`` leading zero bits, then try again."""

    code = "pow-required"

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.bits = bits


class Busy(AuthError):
    """Too many password hashes are waiting; try again later."""

    code = "unavailable"

    def __init__(self, retry_after: float) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class RegistrationError(AuthError):
    """Registration was refused."""

    code = "registration-refused"


class RegistrationClosed(RegistrationError):
    """This server does not accept new registrations."""

    code = "registration-closed"


class InvalidUsername(RegistrationError):
    """User names are 1 to 32 characters: lower-case letters, digits, '_', '.', '-'."""

    code = "invalid-username"


class WeakPassword(RegistrationError):
    """Passwords must have 8 to 1024 characters and differ from the user name."""

    code = "weak-password"


class InvalidIdentityKey(RegistrationError):
    """The identity key must be a 32-byte Ed25519 public key."""

    code = "invalid-identity-key"


class NoUsableCredential(RegistrationError):
    """Give a password or an identity key for a login method this server enables."""

    code = "no-usable-credential"


class BadProofOfWork(RegistrationError):
    """The proof of work is missing or wrong."""

    code = "bad-proof-of-work"


class NameTaken(RegistrationError):
    """That user name is taken."""

    code = "name-taken"
