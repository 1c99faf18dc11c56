"""What a password becomes before it leaves the client: one derivation per use, as password
managers do (e.g. Bitwarden's master-password hash vs. its key-encryption key).

The same account password used to be sent to the relay at every login *and* be the default
keystore passphrase, so the relay held what opens the keystore. Now:

- the **login secret** is ``Argon2id(password, salt = LOGIN_LABEL || 0x00 || user name,
  ad = LOGIN_LABEL)`` (RFC 9106), sent instead of the password and hashed again by the
  server as any password is (a stolen server database still needs a full Argon2id per guess);
- the **keystore key** is Argon2id over the passphrase with a random salt and
  :data:`KEYSTORE_LABEL` as associated data (:mod:`securechat.client.keystore`).

The two derivations differ in salt and label, so the login secret says nothing about the
keystore key: a relay holding it can only guess passwords offline, each guess costing the
same Argon2id as a guess against the keystore itself. The user name in the salt makes one
password give different login secrets for different accounts (and servers cannot share a
precomputed table). ``securechat-admin`` applies the same derivation, so accounts it creates
are the ones the client logs in to.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

LOGIN_LABEL = b"securechat-v1 login secret"
KEYSTORE_LABEL = b"securechat-v1 keystore key"
#: Marks a derived login secret; the server treats it as an opaque password.
LOGIN_PREFIX = "sclogin1:"
#: RFC 9106's second recommended profile with one lane (as the keystore): the relay's cost
#: per guess against a recorded login secret.
LOGIN_MEMORY_KIB = 65536
LOGIN_ITERATIONS = 3


#: NIST SP 800-63B 5.1.1.2: at least 8 characters. The server can no longer check what it
#: never sees, so the client and ``securechat-admin`` check new passwords themselves.
MIN_PASSWORD_CHARS = 8


class EmptyPassword(ValueError):
    """An empty password or passphrase protects nothing and is refused."""


def new_password_problem(user: str, password: str) -> str | None:
    """Why ``password`` is not acceptable for a new account ``user`` (None if it is)."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the password must have at least {MIN_PASSWORD_CHARS} characters"
    if password.casefold() == user.casefold():
        return "the password must not be the user name"
    return None


def login_secret(
    user: str,
    password: str,
    *,
    memory_kib: int = LOGIN_MEMORY_KIB,
    iterations: int = LOGIN_ITERATIONS,
) -> str:
    """The string a client sends as its password for account ``user``.

    :raises EmptyPassword: ``password`` is empty.
    """
    if not password:
        raise EmptyPassword("an empty password is not allowed")
    digest = Argon2id(
        salt=LOGIN_LABEL + b"\0" + user.encode("utf-8"),
        length=32,
        iterations=iterations,
        lanes=1,
        memory_cost=memory_kib,
        ad=LOGIN_LABEL,
    ).derive(password.encode("utf-8"))
    return LOGIN_PREFIX + base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")
