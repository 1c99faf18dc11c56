"""The exception hierarchy shared by the server, the admin tool and the client.

Each class's docstring is the text a user sees, so keep it one plain sentence.
"""

from __future__ import annotations


class SecureChatError(Exception):
    """Something went wrong in securechat."""


class ConfigError(SecureChatError):
    """The configuration file has a bad value.

    The message always names the file and the key, so one line is enough for the operator.
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class StoreError(SecureChatError):
    """The database could not complete the operation."""


class UserExists(StoreError):
    """A user with that name already exists."""


class NoSuchUser(StoreError):
    """There is no user with that name."""


class QueueFull(StoreError):
    """The recipient's offline queue is full."""


class TooManyPrekeys(StoreError):
    """Storing these one-time prekeys would exceed the per-backend limit."""


class StoreUnavailable(StoreError):
    """The store refuses new envelopes for now (the disk is almost full); try again later.

    ``retry_after`` is the number of seconds the client is told to wait.
    """

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RoomConflict(SecureChatError):
    """The room has moved on since that event was made: read its latest events and retry."""
