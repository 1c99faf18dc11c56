"""Client unit tests derive login secrets with cheap Argon2id parameters.

The production derivation (64 MiB, t = 3) is what the end-to-end and adversary tests run;
here every simulated login would pay it again, for nothing these tests look at.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from securechat.client import account
from securechat.crypto.password_kdf import login_secret

cheap_login_secret: Callable[[str, str], str] = functools.partial(
    login_secret, memory_kib=8192, iterations=1
)


@pytest.fixture(autouse=True)
def _cheap_login_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(account, "login_secret", cheap_login_secret)
