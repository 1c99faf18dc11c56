"""A client whose one-time prekeys are drained makes new ones at a bounded rate, off the
reactor thread, one top-up per backend at a time (issue 10: 100 bundle fetches used to
cost a victim 21.5 s of CPU in RSA key generation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer

from securechat.client import prekeys as prekeys_mod
from securechat.client.sessions import SessionManager
from tests.client.test_sessions import manager


@pytest.fixture
def bob(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SessionManager:
    monkeypatch.setattr(prekeys_mod, "ONE_TIME_TARGET", {"ecdh": 4})
    monkeypatch.setattr(prekeys_mod, "ONE_TIME_PER_HOUR", {"ecdh": 10})
    m = manager(tmp_path, "bob")
    now = [1_700_000_000.0]
    m.prekeys.clock = lambda: now[0]
    m.now = now  # type: ignore[attr-defined]
    return m


@pytest_twisted.inlineCallbacks
def test_top_ups_stay_within_the_hourly_budget(bob: Any) -> Any:
    """Drained to zero again and again, it makes at most ONE_TIME_PER_HOUR keys an hour."""
    made = []
    for _ in range(6):
        made.append(len((yield defer.ensureDeferred(bob.prekeys.make_one_time("ecdh", 0)))))
    assert made == [4, 4, 2, 0, 0, 0]
    bob.now[0] += 3600 * 0.4  # 4 keys' worth of budget comes back
    assert len((yield defer.ensureDeferred(bob.prekeys.make_one_time("ecdh", 0)))) == 4
    private = [k for k in bob.state.prekeys if k.startswith("otk:")]
    assert len(private) == 14


@pytest_twisted.inlineCallbacks
def test_keys_are_made_on_a_thread_one_top_up_at_a_time(bob: Any) -> Any:
    """Generation runs through run_keygen (a thread); a second request for the same backend
    while one runs adds nothing."""
    calls: list[defer.Deferred[Any]] = []

    def held(fn: Any, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        calls.append(d)
        d.addCallback(lambda _: fn(*args))
        return d

    bob.prekeys.run_keygen = held
    first = defer.ensureDeferred(bob.prekeys.make_one_time("ecdh", 0))
    assert (yield defer.ensureDeferred(bob.prekeys.make_one_time("ecdh", 0))) == []
    calls[0].callback(None)
    assert len((yield first)) == 4 and len(calls) == 1
