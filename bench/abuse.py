"""What each attack of issue 10 costs the victim and the server, next to no attack at all.

Run with ``python -m bench.abuse [--only NAME[,NAME...]] [--json FILE]``.

For every scenario (see :mod:`bench._abuse` for how to add one) the real daemon
(``twistd -n securechat``, temporary config on 127.0.0.1, port 0) is started twice: once
with the victim alone, once while the attacker runs. Each phase prints the attacker's rate
and what the server answered it, the server's RSS (start, peak, end) and CPU (from
``/proc/PID``), and the victim's latency (p50, max) and successes. Attacker and victim run
in this process; the server's figures are its own. Every attack is bounded in count and
time, on loopback only.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from bench._abuse import ConfigDir, PhaseResult, Scenario, run_phase

#: Modules with a ``SCENARIOS`` list, in the order their rows are printed.
SCENARIO_MODULES = ("bench.abuse_login", "bench.abuse_store")


def scenarios() -> list[Scenario]:
    """Every scenario of every module in :data:`SCENARIO_MODULES`."""
    found: list[Scenario] = []
    for name in SCENARIO_MODULES:
        found.extend(importlib.import_module(name).SCENARIOS)
    return found


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def row(r: PhaseResult) -> str:
    """One table row; the attack columns are blank for the reference phase."""
    a = r.attack
    rate = f"{a.rate:8.1f}" if a is not None else f"{'-':>8}"
    p = r.probe
    return (
        f"  {r.phase:<7}{rate} {_mib(p.start_kib):>6} {_mib(p.peak_kib):>6} {_mib(p.end_kib):>6}"
        f" {p.cpu_percent:6.0f}% {r.latency_ms(50):8.1f} {r.latency_ms(100):8.1f}"
        f" {r.victim_ok:>6}"
    )


HEADER = (
    "  phase  att/s   RSS MiB: start   peak    end  srv CPU  p50 ms   max ms     ok"
)


def report(s: Scenario, alone: PhaseResult, attacked: PhaseResult) -> None:
    print(f"\n{s.name}: {s.attack_text}")
    print(f"  victim: {s.victim_text}")
    print(HEADER)
    print(row(alone))
    print(row(attacked))
    if attacked.attack is not None:
        print(f"  attacker got: {attacked.attack.summary()} in {attacked.attack.seconds:.1f} s")
    for failure in (*alone.failures, *attacked.failures)[:3]:
        print(f"  victim failure: {failure}")
    sys.stdout.flush()


def as_json(r: PhaseResult) -> dict[str, Any]:
    a = r.attack
    return {
        "phase": r.phase,
        "attack_rate": a.rate if a else None,
        "attack_outcomes": dict(a.outcomes) if a else None,
        "rss_kib": {"start": r.probe.start_kib, "peak": r.probe.peak_kib, "end": r.probe.end_kib},
        "cpu_percent": r.probe.cpu_percent,
        "victim_latency_ms": {"p50": r.latency_ms(50), "max": r.latency_ms(100)},
        "victim_ok": len(r.latencies),
        "victim_failed": r.failures,
    }


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    chosen = scenarios()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in chosen}
        if unknown:
            raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in wanted]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp:
        configs = ConfigDir(Path(tmp))
        print("Each attack against a fresh daemon, next to the victim alone (loopback).")
        for s in chosen:
            alone = await run_phase(reactor, s, configs, attacked=False)
            attacked = await run_phase(reactor, s, configs, attacked=True)
            report(s, alone, attacked)
            out[s.name] = {"alone": as_json(alone), "attack": as_json(attacked)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.abuse", description=__doc__)
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    if args.list:
        for s in scenarios():
            print(f"{s.name}: {s.attack_text}")
        return 0

    async def go(reactor: Any) -> None:
        out = await run(reactor, args)
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
