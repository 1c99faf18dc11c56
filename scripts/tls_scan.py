"""Scan the real relay's TLS endpoint with sslyze against Mozilla's "modern" profile.

Run by ``scripts/tls-scan`` with the application's interpreter (``.venv/bin/python``); the
scanner runs from its own virtualenv because sslyze 6.3.1 pins ``cryptography<47`` while the
application needs 50 (``docs``: security notes section 3). What is scanned is the daemon an
operator runs, ``twistd -n securechat``, started through :mod:`tests.e2e.daemon` so that
readiness is the ``listening on HOST:PORT`` log line (no sleeps, the kernel picks the port)
and not a separate TLS set-up that could drift from production.

Exit status: sslyze's own (0 = compliant, 1 = not compliant), or 2 when the scan could not
run (daemon did not start, sslyze crashed or timed out). Every wait has a deadline, so the
whole run stays inside ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.e2e.daemon lives in the repository, not in the package

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.error import ProcessDone, ProcessTerminated  # noqa: E402
from twisted.internet.protocol import ProcessProtocol  # noqa: E402
from twisted.python.failure import Failure  # noqa: E402

from tests.e2e.daemon import Daemon, start_daemon  # noqa: E402

#: Loopback only, kernel-chosen port, every file under the temporary directory; the leaf
#: names ``localhost`` because sslyze connects by that name (to 127.0.0.1).
CONFIG = """\
[server]
host = "127.0.0.1"
port = 0

[tls]
auto_generate = true
cert = "tls/server.pem"
key = "tls/server.key"
ca = "tls/ca.pem"
ca_key = "tls/ca.key"
min_version = "{min_version}"
hostnames = ["localhost", "127.0.0.1"]

[store]
path = "data/securechat.sqlite3"
"""
#: Seconds kept back from the sslyze deadline so the daemon can still be stopped cleanly.
STOP_RESERVE = 15.0
START_TIMEOUT = 30.0
EXIT_NOT_RUN = 2


class _Collect(ProcessProtocol):
    """Gathers a child's output and fires ``ended`` with its exit code (None if signalled)."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        code = value.exitCode if reason.check(ProcessDone, ProcessTerminated) else None
        self.ended.callback(code)


async def run_sslyze(
    reactor: Any, python: str, port: int, ca: Path, out: Path, cwd: Path, timeout: float
) -> tuple[int | None, str]:
    """Run the scanner against ``localhost:PORT`` on 127.0.0.1; kill it at ``timeout``."""
    argv = [
        python,
        "-m",
        "sslyze",
        f"localhost:{port}{{127.0.0.1}}",
        f"--certinfo_ca_file={ca}",
        "--mozilla_config=modern",
        f"--json_out={out}",
    ]
    proto = _Collect()
    # cwd is the scan directory: the repository's own ``tests`` package must not shadow
    # anything the scanner imports.
    process = reactor.spawnProcess(proto, python, argv, env=None, path=str(cwd))
    watchdog = reactor.callLater(timeout, process.signalProcess, "KILL")
    # A stopped script (SIGTERM from ``timeout``) must not leave the scanner running.
    trigger = reactor.addSystemEventTrigger("before", "shutdown", _kill_child, process, proto)
    code = await proto.ended
    reactor.removeSystemEventTrigger(trigger)
    if watchdog.active():
        watchdog.cancel()
    else:
        return None, proto.output.decode("utf-8", "replace") + f"\nsslyze killed after {timeout}s"
    return code, proto.output.decode("utf-8", "replace")


def summary(report: dict[str, Any]) -> list[str]:
    """What the server offered, read from sslyze's JSON (versions, suites, groups, cert)."""
    lines: list[str] = []
    for server in report.get("server_scan_results", []):
        result = server.get("scan_result") or {}
        for version in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"):
            attempt = result.get(f"{version}_cipher_suites") or {}
            accepted = (attempt.get("result") or {}).get("accepted_cipher_suites", [])
            names = [s["cipher_suite"]["name"] for s in accepted]
            lines.append(f"  {version}: {', '.join(names) if names else 'refused'}")
        curves = ((result.get("elliptic_curves") or {}).get("result") or {}).get(
            "supported_curves", []
        )
        lines.append(f"  groups: {', '.join(c['name'] for c in curves) or 'none reported'}")
        deployments = ((result.get("certificate_info") or {}).get("result") or {}).get(
            "certificate_deployments", []
        )
        for deployment in deployments:
            leaf = deployment["received_certificate_chain"][0]
            key = leaf.get("public_key") or {}
            lines.append(
                f"  leaf: {key.get('algorithm')} {key.get('ec_curve_name') or key.get('key_size')}"
                f", valid {leaf.get('not_valid_before')} .. {leaf.get('not_valid_after')}"
            )
    return lines


def compliance_section(output: str) -> str:
    """The part of sslyze's console output that states the Mozilla verdict and its reasons."""
    marker = output.find("COMPLIANCE AGAINST")
    return output[marker:].strip() if marker >= 0 else output.strip()


def _kill_child(process: Any, proto: _Collect) -> None:
    if not proto.ended.called:
        process.signalProcess("KILL")


def _kill_daemon(daemon: Daemon, work: Path) -> defer.Deferred[Any] | None:
    """Shutdown trigger: SIGKILL a daemon still running, then remove the scan directory."""
    if not daemon.running:
        shutil.rmtree(work, ignore_errors=True)
        return None
    d = defer.ensureDeferred(daemon.kill(timeout=5))
    return d.addBoth(lambda _: shutil.rmtree(work, ignore_errors=True))


async def scan(reactor: Any, args: argparse.Namespace) -> int:
    """Start the daemon, scan it, stop it; return the exit status."""
    deadline = time.monotonic() + args.budget
    work = Path(tempfile.mkdtemp(prefix="securechat-tlsscan-"))
    daemon: Daemon | None = None
    try:
        config = work / "server.toml"
        config.write_text(CONFIG.format(min_version=args.min_version), encoding="utf-8")
        try:
            daemon = await start_daemon(reactor, config, timeout=min(START_TIMEOUT, args.budget))
        except Exception as e:
            print(f"tls-scan: the daemon did not start: {e}", file=sys.stderr)
            return EXIT_NOT_RUN
        assert daemon.port is not None
        # If this script is stopped (SIGTERM from ``timeout``, Ctrl-C), the reactor shuts
        # down without resuming this coroutine; the trigger makes sure no daemon outlives it.
        reactor.addSystemEventTrigger("before", "shutdown", _kill_daemon, daemon, work)
        print(f"tls-scan: daemon listening on 127.0.0.1:{daemon.port}; running sslyze")
        out = Path(args.json_out).resolve() if args.json_out else work / "sslyze.json"
        out.unlink(missing_ok=True)
        left = deadline - time.monotonic() - STOP_RESERVE
        if left <= 0:
            print("tls-scan: no time left for the scan", file=sys.stderr)
            return EXIT_NOT_RUN
        code, output = await run_sslyze(
            reactor, args.sslyze_python, daemon.port, work / "tls" / "ca.pem", out, work, left
        )
        if args.verbose:
            print(output)
        if code not in (0, 1) or not out.exists():
            print(f"tls-scan: sslyze did not complete (exit {code}):\n{output}", file=sys.stderr)
            return EXIT_NOT_RUN
        print("tls-scan: what the server offered (sslyze JSON):")
        print("\n".join(summary(json.loads(out.read_text(encoding="utf-8")))))
        print(compliance_section(output))
        print(f"tls-scan: {'compliant' if code == 0 else 'NOT compliant'} with Mozilla modern")
        return code
    finally:
        if daemon is not None and daemon.running:
            try:
                stopped = await daemon.stop(timeout=STOP_RESERVE - 5)
            except defer.TimeoutError:
                print("tls-scan: the daemon ignored SIGTERM; killing it", file=sys.stderr)
                await daemon.kill(timeout=5)
            else:
                if stopped.code not in (0, None) or "Traceback" in stopped.output:
                    print(f"tls-scan: daemon shutdown was not clean:\n{stopped.output}",
                          file=sys.stderr)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Parse arguments and run :func:`scan` under the reactor."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sslyze-python", required=True, help="python of the sslyze venv")
    parser.add_argument("--budget", type=float, default=110.0, help="seconds for everything")
    parser.add_argument("--json-out", help="keep sslyze's JSON report here")
    parser.add_argument(
        "--min-version",
        choices=("1.3", "1.2"),
        default="1.3",
        help="the daemon's [tls] min_version; 1.2 shows that the gate does fail",
    )
    parser.add_argument("--verbose", action="store_true", help="print sslyze's full output")
    args = parser.parse_args()

    async def run(reactor: Any) -> None:
        raise SystemExit(await scan(reactor, args))  # react() exits with a SystemExit's code

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
