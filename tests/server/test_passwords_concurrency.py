"""Concurrent Argon2id work on the relay's thread pool must never hang.

OpenSSL 4 (cryptography 50) starts internal threads for Argon2id with more than one lane,
and two such derivations at once could deadlock; production parameters use one lane and
multi-lane hashes are serialised. Each test joins its threads with a bound.
"""

from __future__ import annotations

import threading

from securechat.server.passwords import (
    DEFAULT_PARAMS,
    Argon2Params,
    HashParams,
    hash_password,
    verify_password,
)


def run_concurrently(n: int, work: object) -> list[bool]:
    results: list[bool] = []
    lock = threading.Lock()

    def target() -> None:
        ok = work()  # type: ignore[operator]
        with lock:
            results.append(ok)

    threads = [threading.Thread(target=target, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "Argon2id derivations hung"
    return results


def test_production_parameters_use_one_lane() -> None:
    assert DEFAULT_PARAMS.argon2id.lanes == 1
    assert DEFAULT_PARAMS.argon2id.memory_kib >= 19 * 1024  # OWASP minimum


def test_concurrent_production_hashes_finish() -> None:
    stored = hash_password("correct horse battery", "argon2id")
    assert "p=1" in stored
    results = run_concurrently(4, lambda: verify_password(stored, "correct horse battery"))
    assert results == [True] * 4


def test_concurrent_multi_lane_hashes_are_serialised_and_finish() -> None:
    multi = HashParams(Argon2Params(memory_kib=8192, iterations=1, lanes=4),
                       DEFAULT_PARAMS.scrypt)  # fmt: skip
    stored = hash_password("another passphrase", "argon2id", multi)
    assert "p=4" in stored
    results = run_concurrently(4, lambda: verify_password(stored, "another passphrase"))
    assert results == [True] * 4
