"""The frame of ``bench.abuse``: what a scenario is, and how one phase of it is measured.

A :class:`Scenario` is one attack from issue 10 and the victim it hurts. It is measured
twice, each time against a fresh daemon with the scenario's config: once with the victim
alone (the reference) and once while the attack runs. Both phases report the same
figures, so the table shows what the attack costs the victim and the server.

Adding a scenario: subclass :class:`Scenario`, set ``name``, ``attack_text``,
``victim_text`` and ``config``, implement :meth:`Scenario.victim` (one victim operation,
timed by the runner) and :meth:`Scenario.attack` (a bounded loop that also ends when
``stop`` fires), optionally :meth:`Scenario.prepare`; then list an instance in a module's
``SCENARIOS`` and that module in :data:`bench.abuse.SCENARIO_MODULES`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet import defer

from bench._common import percentile
from tests.abuse.harness import AttackStats, Probe, ProbeResult, pause
from tests.conftest import merged_sections, toml_text
from tests.robustness.conftest import Running, running_daemon


class VictimFailed(Exception):
    """One victim operation did not succeed; the message says how."""


class Scenario:
    """One attack and its victim; subclasses fill in the class attributes and methods."""

    #: Short name (the ``--only`` argument and the row label).
    name: ClassVar[str] = ""
    #: What the attacker does, in one line.
    attack_text: ClassVar[str] = ""
    #: What the victim does (and what the latency column measures), in one line.
    victim_text: ClassVar[str] = ""
    #: Config overrides (``{section: {key: value}}``) for both phases.
    config: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: Victim operations per phase, and the pause between them.
    victim_runs: ClassVar[int] = 6
    victim_interval: ClassVar[float] = 0.5
    #: Seconds the attack runs before the victim starts (it has reached its steady state).
    settle: ClassVar[float] = 1.0

    async def prepare(self, relay: Running) -> None:
        """Before either phase's measurement: accounts, contacts, ..."""

    async def victim(self, relay: Running) -> None:
        """One victim operation; raise :class:`VictimFailed` (or anything) if it fails."""
        raise NotImplementedError

    async def attack(self, relay: Running, stop: defer.Deferred[None]) -> AttackStats:
        """Run the attack until ``stop`` fires (or its own bound); return what it did."""
        raise NotImplementedError


@dataclass
class PhaseResult:
    """The figures of one phase."""

    phase: str
    probe: ProbeResult
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    attack: AttackStats | None = None

    @property
    def victim_ok(self) -> str:
        return f"{len(self.latencies)}/{len(self.latencies) + len(self.failures)}"

    def latency_ms(self, p: float) -> float:
        return 1000.0 * percentile(sorted(self.latencies), p)


class ConfigDir:
    """Writes each phase's config into its own directory under ``root``."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._n = 0

    def __call__(self, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
        self._n += 1
        directory = self._root / f"daemon{self._n}"
        directory.mkdir(parents=True)
        path = directory / "server.toml"
        path.write_text(toml_text(merged_sections(overrides)))
        return path


async def run_phase(
    reactor: Any, scenario: Scenario, configs: ConfigDir, *, attacked: bool
) -> PhaseResult:
    """Start a daemon, prepare, (start the attack,) run the victim, stop everything."""
    async with running_daemon(reactor, configs, scenario.config) as relay:
        await scenario.prepare(relay)
        probe = Probe(reactor, relay.daemon.pid)
        stop: defer.Deferred[None] = defer.Deferred()
        attack: defer.Deferred[AttackStats] | None = None
        if attacked:
            attack = defer.ensureDeferred(scenario.attack(relay, stop))
            await pause(reactor, scenario.settle)
        latencies: list[float] = []
        failures: list[str] = []
        for _ in range(scenario.victim_runs):
            start = time.perf_counter()
            try:
                await scenario.victim(relay)
            except Exception as e:  # reported in the table, not raised
                failures.append(f"{type(e).__name__}: {e}")
            else:
                latencies.append(time.perf_counter() - start)
            await pause(reactor, scenario.victim_interval)
        stop.callback(None)
        stats = await attack if attack is not None else None
        result = PhaseResult("attack" if attacked else "alone", probe.stop(), latencies, failures)
        result.attack = stats
        relay.assert_healthy()
        return result
