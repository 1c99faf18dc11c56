"""Fixtures of the adversary tests: one daemon and malicious relay per test module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.adversary.arena import Arena


def _block(coro: Any) -> Any:
    return pytest_twisted.blockon(defer.ensureDeferred(coro))


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arena]:
    """A daemon (ecdh only) with a :class:`~tests.adversary.relay.MaliciousRelay` in front.

    Tests share it within a module: use user names no other test of the module uses, and
    remove the rules you add (``handle.remove()``) or use :func:`fresh_rules`.
    """
    a = Arena(tmp_path_factory.mktemp("adversary"))
    _block(a.start())
    yield a
    _block(a.stop())


@pytest.fixture
def relay(arena: Arena) -> Iterator[Any]:
    """The arena's relay, its record emptied, and every rule a test adds removed again
    afterwards."""
    assert arena.relay is not None
    arena.relay.frames.clear()
    yield arena.relay
    arena.relay.client_rules.clear()
    arena.relay.server_rules.clear()
