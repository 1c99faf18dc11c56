"""Helpers shared by the load benchmarks (``bench.floor``, ``bench.loadgen``, ``bench.relay``).

Why a separate module: the floor relay, the load generator and the orchestrator run as
three different processes (so that each one's CPU time can be read on its own from
``/proc``), but they must agree on TLS material, the floor's frame format, how a payload
carries its send timestamp, and how process statistics are read.
"""

from __future__ import annotations

import atexit
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from twisted.logger import Logger

from securechat.config import TLSSection
from securechat.tls import ensure_tls_material

#: Every benchmark stays on loopback.
HOST = "127.0.0.1"
#: The envelope size the architecture's budget is stated for.
PAYLOAD_BYTES = 256
#: The line both relays print once they listen (the daemon's log line has the same shape).
LISTENING = re.compile(r"listening on (?P<host>[^\s:]+):(?P<port>\d+)")
#: Result lines of the load generator start with this, followed by one JSON object.
RESULT_PREFIX = "RESULT "

#: Payload prefix: send time (``time.perf_counter``, same process on both ends) and the
#: sending client's index, so the receiver can measure latency and free the sender's slot.
STAMP = struct.Struct("<dI")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def payload(sender: int, size: int = PAYLOAD_BYTES) -> bytes:
    """An opaque envelope of ``size`` bytes stamped with the send time and sender index."""
    return STAMP.pack(time.perf_counter(), sender) + b"\xa5" * (size - STAMP.size)


def tls_material(directory: Path) -> tuple[TLSSection, bytes]:
    """A private CA and a server certificate for ``localhost``/``127.0.0.1`` in ``directory``.

    Made by :func:`securechat.tls.ensure_tls_material`, exactly like the daemon's own
    ``auto_generate``, so the floor and securechat present the same kind of certificate
    (ECDSA P-256) and the clients verify both against the same CA file.
    """
    tls = TLSSection(
        auto_generate=True,
        cert=directory / "server.pem",
        key=directory / "server.key",
        ca=directory / "ca.pem",
        ca_key=directory / "ca.key",
    )
    ensure_tls_material(tls, Logger(namespace="bench.tls"))
    return tls, tls.ca.read_bytes()


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (children inherit it).

    Thousands of idle TLS clients need one descriptor each on both sides; the soft limit
    is often 1024 while the hard limit is much higher.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads), from ``/proc``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[rank]


# -- child processes -------------------------------------------------------------------------
_children: list[subprocess.Popen[bytes]] = []


def _kill_children() -> None:
    """Terminate every child this process started and has not reaped: nothing outlives us."""
    for proc in list(_children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for proc in list(_children):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _children.clear()


atexit.register(_kill_children)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # runs finally blocks and atexit, so children die too


def install_sigterm_handler() -> None:
    """Turn SIGTERM into SystemExit so ``finally`` and ``atexit`` clean up the children."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def spawn(argv: Sequence[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child writing stdout and stderr to ``log``; it is killed at our exit.

    A file rather than a pipe: a relay logs a line per login, and a pipe nobody reads
    would fill and stall it in the middle of a measurement.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
        )
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait, SIGKILL if it does not go; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _children:
        _children.remove(proc)
    return proc.returncode


def wait_for_port(proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> int:
    """Poll ``log`` until the child prints its ``listening on HOST:PORT`` line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text("utf-8", "replace"))
        if match:
            return int(match["port"])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = "\n".join(log.read_text("utf-8", "replace").splitlines()[-30:])
    raise RuntimeError(f"{proc.args!r} did not listen (exit {proc.poll()}):\n{tail}")


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
