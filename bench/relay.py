"""Proof under load: securechat's relay next to the floor, on this machine.

Run with ``python -m bench.relay [--clients 2,50,500] [--duration S] [--quick]``.

What it does, and why each choice:

- Starts the real daemon (``twistd -n securechat`` with a temporary config on
  127.0.0.1, port 0) and the floor (:mod:`bench.floor`, same TLS options, nothing else),
  each as its own process, and drives them with :mod:`bench.loadgen` in a third process,
  so ``/proc/PID/stat`` gives each server's CPU time alone (utime + stime, all threads:
  the store's pool thread and the password-hash threads count too).
- The daemon keeps ``synchronous = "full"``: accepted means durable, as in production.
  Only the limits that would measure the limiter instead of the relay are raised (send
  rate, queue length, login throttling), and users are created before the daemon starts
  with cheap Argon2id parameters (m = 8 KiB, t = 1) through the same schema and queries
  as ``securechat-admin``, because 500+ production hashes (~0.15 s each) would dominate
  the run; the login figures say so.
- Throughput at each client count: closed loop (``--window`` envelopes in flight per
  client), then a fixed-rate run at the same offered load for both relays so their
  latencies compare at equal load, not at each one's own saturation point.
- Idle connections (logged in) with the server's RSS growth per connection; logins with
  a first end-to-end handshake per backend; offline enqueue and drain.
- Everything is loopback, bounded in count and time; children are killed on exit,
  including on exceptions and SIGTERM (``try/finally`` plus ``atexit``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench._common import (
    RESULT_PREFIX,
    install_sigterm_handler,
    python_module,
    raise_nofile,
    spawn,
    stop,
    tls_material,
    wait_for_port,
)

PASSWORD = "bench-password"
BACKENDS = ("ecdh", "dh", "rsa")
#: The client count at which the ack-cost diagnostic runs (the target's client count).
DIAGNOSTIC_N = 50


def twistd_argv(config: Path) -> list[str]:
    """``twistd -n securechat --config FILE`` with this interpreter, logging to stdout."""
    script = Path(sys.executable).with_name("twistd")
    base = [sys.executable, str(script)] if script.exists() else python_module("twisted")
    return [*base, "-n", "--pidfile=", "--logfile=-", "securechat", "--config", str(config)]


def write_config(directory: Path, messaging: str) -> Path:
    """A daemon config for the bench: production settings except the limits named above."""
    path = directory / f"server-{messaging}.toml"
    path.write_text(f"""\
[server]
host = "127.0.0.1"
port = 0
handshake_timeout = 120.0
idle_timeout = 600.0
max_outbound_bytes = 67108864

[tls]
auto_generate = true
cert = "tls/server.pem"
key = "tls/server.key"
ca = "tls/ca.pem"
ca_key = "tls/ca.key"

[store]
path = "securechat.sqlite3"
queue_limit = 1000000
queue_bytes = 100000000000
sender_limit = 1000000
sender_bytes = 100000000000
stranger_limit = 1000000      # the load's users are not contacts of each other
stranger_bytes = 100000000000
strangers_limit = 1000000
strangers_bytes = 100000000000
synchronous = "full"

[auth]
methods = ["password", "publickey"]
registration = true
password_hash = "argon2id"
pair_burst = 1000000
pair_rate = 1000000.0
account_burst = 1000
account_rate = 1000.0
address_burst = 1000000
address_rate = 1000000.0

[crypto]
backends = ["ecdh", "dh", "rsa"]
default_backend = "ecdh"

[policy]
messaging = "{messaging}"
send_rate = 1000000.0
send_burst = 1000000
""")
    return path


def create_users(db: Path, names: Iterable[str]) -> tuple[int, float]:
    """Create the accounts (cheap hash, see module doc); returns (count, seconds)."""
    from securechat.server.passwords import Argon2Params, HashParams, ScryptParams, hash_password
    from securechat.server.store import queries, schema

    start = time.perf_counter()
    cheap = HashParams(Argon2Params(memory_kib=8, iterations=1, lanes=1), ScryptParams(1, 1, 1))
    hashed = hash_password(PASSWORD, "argon2id", cheap)
    # "normal": no fsync per user here; the daemon opens the file with "full" itself.
    conn = schema.open_database(db, "normal")
    count = 0
    try:
        now = time.time()
        for name in names:
            queries.add_user(conn, name, "user", hashed, None, now)
            count += 1
    finally:
        conn.close()
    return count, time.perf_counter() - start


def production_hash_seconds() -> float:
    """How long one production-cost Argon2id hash takes here (what a real login costs)."""
    from securechat.server.passwords import hash_password

    start = time.perf_counter()
    hash_password(PASSWORD, "argon2id")
    return time.perf_counter() - start


class Server:
    """One relay process (the daemon or the floor) and where it logs."""

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.log = log
        self.proc = spawn(argv, log, cwd)
        self.port = wait_for_port(self.proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-30:])
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")

    def stop(self) -> None:
        stop(self.proc)


def run_loadgen(server: Server, ca: Path, timeout: float, *args: str) -> dict[str, Any]:
    """One loadgen process against ``server``; returns its parsed result."""
    target = "floor" if server.name == "floor" else "securechat"
    argv = python_module(
        "bench.loadgen",
        "--target",
        target,
        "--port",
        str(server.port),
        "--ca",
        str(ca),
        "--server-pid",
        str(server.pid),
        "--time-limit",
        str(timeout),
        *args,
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30, check=False)
    server.check()
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            if "error" in result:
                raise RuntimeError(f"loadgen {args}: {result['error']}\n{done.stderr[-3000:]}")
            return result
    raise RuntimeError(f"loadgen {args} printed no result:\n{done.stderr[-3000:]}")


# -- the plan --------------------------------------------------------------------------------
def plan(args: argparse.Namespace) -> dict[str, Any]:
    """Every user name each phase needs, so all accounts exist before the daemon starts."""
    idle_max = max(args.idle) if args.idle else 0
    hs_pairs = {
        "ecdh": args.hs_pairs,
        "dh": max(4, args.hs_pairs // 5),
        "rsa": max(3, args.hs_pairs // 15),
    }
    names: list[str] = []
    for n in args.clients:
        names += [f"t{n}_{i}" for i in range(n)]
        names += [f"r{n}_{i}" for i in range(n)]
        names += [f"b{n}_{i}" for i in range(n)] if args.batch > 1 else []
        names += [f"a{n}_{i}" for i in range(n)] if n == DIAGNOSTIC_N else []
    names += [f"idle_{i}" for i in range(idle_max)]
    for b in BACKENDS:
        names += [f"hs_{b}_r{i}" for i in range(hs_pairs[b])]
        names += [f"hs_{b}_i{i}" for i in range(hs_pairs[b])]
    names += ["off_a", "off_b"]
    return {"names": names, "hs_pairs": hs_pairs}


def fmt(v: float, digits: int = 1) -> str:
    return "-" if v != v else f"{v:,.{digits}f}"  # nan -> "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clients", default="2,50,500", help="client counts for throughput")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--window", type=int, default=8, help="closed loop: in flight per client")
    p.add_argument("--batch", type=int, default=1, help="also run closed loop with this batch")
    p.add_argument(
        "--rate-fraction",
        type=float,
        default=0.5,
        help="fixed-rate runs offer this fraction of the slower relay's closed-loop rate",
    )
    p.add_argument("--idle", default="1000,5000", help="idle connection counts ('' for none)")
    p.add_argument("--hs-pairs", type=int, default=60, help="ecdh handshakes (dh /5, rsa /15)")
    p.add_argument("--offline", type=int, default=20000, help="envelopes for the offline test")
    p.add_argument("--quick", action="store_true", help="small and short: about a minute")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--json", type=Path, help="also write every raw result to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.warmup = "2,50", 3.0, 1.0
        args.idle, args.hs_pairs, args.offline = "1000", 15, 5000
    args.clients = [int(x) for x in args.clients.split(",") if x]
    args.idle = [int(x) for x in args.idle.split(",") if x]
    install_sigterm_handler()
    raise_nofile(max([*args.idle, *args.clients, 0]) * 2 + 1024)
    work = Path(tempfile.mkdtemp(prefix="securechat-bench-"))
    servers: list[Server] = []
    results: dict[str, Any] = {
        "throughput": [],
        "rate": [],
        "batch": [],
        "idle": [],
        "handshake": [],
        "offline": None,
    }
    try:
        run(args, work, servers, results)
    finally:
        for s in servers:
            s.stop()
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run(args: argparse.Namespace, work: Path, servers: list[Server], out: dict[str, Any]) -> None:
    t_start = time.perf_counter()
    tls_dir = work / "tls"
    _, _ = tls_material(tls_dir)
    ca = tls_dir / "ca.pem"
    layout = plan(args)
    count, seconds = create_users(work / "securechat.sqlite3", layout["names"])
    prod_hash = production_hash_seconds()
    print(
        f"setup: {count} users created in {seconds:.1f} s (bench-cost Argon2id; one "
        f"production Argon2id hash takes {prod_hash * 1e3:.0f} ms here, so registering "
        f"them at production cost would take ~{count * prod_hash:.0f} s of one core)",
        flush=True,
    )
    anyone = write_config(work, "anyone")
    floor = Server(
        "floor",
        python_module("bench.floor", "--port", "0", "--tls-dir", str(tls_dir)),
        work / "floor.log",
        work,
    )
    servers.append(floor)
    chat = Server("securechat", twistd_argv(anyone), work / "daemon.log", work)
    servers.append(chat)
    print(
        f"floor pid {floor.pid} port {floor.port}; securechat pid {chat.pid} "
        f"port {chat.port}; work dir {work}",
        flush=True,
    )
    limit = str(args.warmup + args.duration + 120)
    common = [
        "--window",
        str(args.window),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
    ]

    # 1. closed-loop throughput, then the same fixed rate against both
    for n in args.clients:
        row: dict[str, Any] = {"clients": n}
        for server in (floor, chat):
            r = run_loadgen(
                server, ca, float(limit), "--clients", str(n), "--prefix", f"t{n}_", *common
            )
            row[server.name] = r
            _progress(f"closed N={n}", server.name, r)
        out["throughput"].append(row)
        slower = min(row["floor"]["msgs_per_s"], row["securechat"]["msgs_per_s"])
        rate = max(100.0, args.rate_fraction * slower)
        rrow: dict[str, Any] = {"clients": n, "rate": rate}
        for server in (floor, chat):
            r = run_loadgen(
                server,
                ca,
                float(limit),
                "--clients",
                str(n),
                "--mode",
                "rate",
                "--rate",
                f"{rate:.0f}",
                "--prefix",
                f"r{n}_",
                *common,
            )
            rrow[server.name] = r
            _progress(f"rate {rate:.0f}/s N={n}", server.name, r)
        out["rate"].append(rrow)
        if n == DIAGNOSTIC_N:
            # Diagnostic, not a realistic client: ack twice a second instead of per frame,
            # which shows what the per-ack store transaction costs the server.
            r = run_loadgen(
                chat,
                ca,
                float(limit),
                "--clients",
                str(n),
                "--ack-interval",
                "0.5",
                "--prefix",
                f"a{n}_",
                *common,
            )
            out["ack_diag"] = r
            _progress(f"closed N={n} acks every 0.5 s", chat.name, r)
        if args.batch > 1:
            r = run_loadgen(
                chat,
                ca,
                float(limit),
                "--clients",
                str(n),
                "--batch",
                str(args.batch),
                "--prefix",
                f"b{n}_",
                *common,
            )
            out["batch"].append(r)
            _progress(f"closed batch N={n}", chat.name, r)

    # 2. logins with a first end-to-end handshake, per backend
    for b in BACKENDS:
        r = run_loadgen(
            chat,
            ca,
            300.0,
            "--scenario",
            "handshake",
            "--backend",
            b,
            "--pairs",
            str(layout["hs_pairs"][b]),
            "--prefix",
            f"hs_{b}_",
        )
        out["handshake"].append(r)
        print(f"  handshake {b}: {r['per_s']:.1f}/s", flush=True)

    # 3. offline enqueue, then drain at login
    r = run_loadgen(
        chat,
        ca,
        300.0,
        "--scenario",
        "offline",
        "--messages",
        str(args.offline),
        "--batch",
        "64",
        "--window",
        "8",
        "--prefix",
        "off_",
    )
    out["offline"] = r
    print(
        f"  offline: enqueue {r['enqueue_per_s']:.0f}/s drain {r['drain_per_s']:.0f}/s", flush=True
    )

    # 4. idle connections; the daemon under "contacts" so logins do not announce presence
    #    to every other user (under "anyone" that is N-1 pushes per login: O(N^2) in all)
    if args.idle:
        chat.stop()
        servers.remove(chat)
        contacts = write_config(work, "contacts")
        for n in args.idle:
            row = {"clients": n}
            # Fresh processes per size: RSS never shrinks back after a bigger run.
            floor.stop()
            servers.remove(floor)
            floor = Server(
                "floor",
                python_module("bench.floor", "--port", "0", "--tls-dir", str(tls_dir)),
                work / "floor.log",
                work,
            )
            servers.append(floor)
            idle_chat = Server("securechat", twistd_argv(contacts), work / "daemon-idle.log", work)
            servers.append(idle_chat)
            for server in (floor, idle_chat):
                r = run_loadgen(
                    server,
                    ca,
                    300.0,
                    "--scenario",
                    "idle",
                    "--clients",
                    str(n),
                    "--prefix",
                    "idle_",
                )
                row[server.name] = r
                print(
                    f"  idle {n} {server.name}: {r['rss_kib_per_conn']:.1f} KiB/conn, "
                    f"{r['logins_per_s']:.0f} logins/s",
                    flush=True,
                )
            idle_chat.stop()
            servers.remove(idle_chat)
            out["idle"].append(row)
    print(f"total {time.perf_counter() - t_start:.0f} s\n", flush=True)
    print_report(out, args)


def _progress(what: str, name: str, r: dict[str, Any]) -> None:
    print(
        f"  {what} {name}: {r['msgs_per_s']:,.0f} msg/s p50 {r['p50_ms']:.2f} ms "
        f"p99 {r['p99_ms']:.2f} ms {r['server_cpu_us_per_msg']:.1f} us/msg "
        f"(server {r['server_cpu_util']:.0%}, loadgen {r['loadgen_cpu_util']:.0%} of a core)"
        f"{' errors ' + str(r['errors']) if r['errors'] else ''}",
        flush=True,
    )


def print_report(out: dict[str, Any], args: argparse.Namespace) -> None:
    """The tables: securechat next to the floor, and the ratio."""
    print(
        f"Throughput, closed loop ({args.window} envelopes of 256 B in flight per client, "
        "1 per send):"
    )
    hdr = (
        f"{'N':>4} {'relay':<11} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/msg':>10} "
        f"{'srv CPU':>7} {'gen CPU':>7}"
    )
    print(hdr)
    for row in out["throughput"]:
        _rows(row)
    print(
        "\nLatency at equal offered load (fixed rate = "
        f"{args.rate_fraction:.0%} of the slower relay's closed-loop rate):"
    )
    print(hdr)
    for row in out["rate"]:
        _rows(row)
    r = out.get("ack_diag")
    if r:
        print(
            f"\nDiagnostic, securechat N={r['clients']} with acks coalesced by the client "
            f"(every 0.5 s instead of per deliver frame): {r['msgs_per_s']:,.0f} msg/s, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
            f"{r['server_cpu_us_per_msg']:.1f} us/msg"
        )
    for r in out["batch"]:
        print(
            f"\nsecurechat closed loop with batch<={args.batch} at N={r['clients']}: "
            f"{r['msgs_per_s']:,.0f} msg/s, p99 {r['p99_ms']:.2f} ms, "
            f"{r['server_cpu_us_per_msg']:.1f} us/msg"
        )
    if out["idle"]:
        print("\nIdle TLS connections (logged in), server RSS growth per connection:")
        print(
            f"{'N':>6} {'relay':<11} {'held':>6} {'KiB/conn':>9} {'conn+login/s':>12} "
            f"{'CPU us/login':>12}"
        )
        for row in out["idle"]:
            for name in ("floor", "securechat"):
                r = row[name]
                print(
                    f"{r['clients']:>6} {name:<11} {r['held']:>6} "
                    f"{r['rss_kib_per_conn']:>9.1f} {r['logins_per_s']:>12,.0f} "
                    f"{r['server_cpu_us_per_login']:>12,.0f}"
                )
    if out["handshake"]:
        print(
            "\nLogin + first end-to-end handshake (fresh user: TLS, hello, login_password, "
            "fetch_bundle, Session.initiate, send, peer Session.respond):"
        )
        print(f"{'backend':<18} {'n':>4} {'per s':>7} {'server ms':>10} {'loadgen ms':>10}")
        for r in out["handshake"]:
            print(
                f"{r['kem']:<18} {r['handshakes']:>4} {r['per_s']:>7.1f} "
                f"{r['server_cpu_ms_per_handshake']:>10.2f} "
                f"{r['loadgen_cpu_ms_per_handshake']:>10.1f}"
                f"{'  FAILURES ' + str(r['respond_failures']) if r['respond_failures'] else ''}"
            )
    r = out["offline"]
    if r:
        print(
            f"\nOffline store ({r['messages']} envelopes, sends of {r['batch']} items, "
            f"{r['sends_in_flight']} in flight, synchronous=full):"
        )
        print(
            f"  enqueue {r['enqueue_per_s']:,.0f} msg/s ({r['enqueue_server_cpu_us_per_msg']:.1f}"
            f" us/msg server CPU); drain at login {r['drain_per_s']:,.0f} msg/s "
            f"({r['drain_server_cpu_us_per_msg']:.1f} us/msg); delivered {r['delivered']}, "
            f"distinct seq {r['distinct_seqs']}, statuses {r['statuses']}"
        )
    _targets(out)


def _rows(row: dict[str, Any]) -> None:
    f, c = row["floor"], row["securechat"]
    for name, r in (("floor", f), ("securechat", c)):
        print(
            f"{row['clients']:>4} {name:<11} {r['msgs_per_s']:>9,.0f} {fmt(r['p50_ms'], 2):>8} "
            f"{fmt(r['p99_ms'], 2):>8} {r['server_cpu_us_per_msg']:>10.1f} "
            f"{r['server_cpu_util']:>7.0%} {r['loadgen_cpu_util']:>7.0%}"
        )
    print(
        f"{'':>4} {'ratio s/f':<11} {c['msgs_per_s'] / f['msgs_per_s']:>9.2f} "
        f"{c['p50_ms'] / f['p50_ms']:>8.2f} {c['p99_ms'] / f['p99_ms']:>8.2f} "
        f"{c['server_cpu_us_per_msg'] / f['server_cpu_us_per_msg']:>10.2f}"
    )


def _targets(out: dict[str, Any]) -> None:
    print("\nTargets:")
    for row in out["throughput"]:
        if row["clients"] == 50:
            ratio = row["securechat"]["msgs_per_s"] / row["floor"]["msgs_per_s"]
            p99 = row["securechat"]["p99_ms"] / row["floor"]["p99_ms"]
            print(
                f"  N=50 throughput >= 0.8x floor: {ratio:.2f}x "
                f"{'MET' if ratio >= 0.8 else 'MISSED'}"
            )
            print(
                f"  N=50 p99 <= 2x floor (closed loop): {p99:.2f}x "
                f"{'MET' if p99 <= 2 else 'MISSED'}"
            )
    for row in out["rate"]:
        if row["clients"] == 50:
            p99 = row["securechat"]["p99_ms"] / row["floor"]["p99_ms"]
            print(
                f"  N=50 p99 <= 2x floor (equal fixed rate): {p99:.2f}x "
                f"{'MET' if p99 <= 2 else 'MISSED'}"
            )
    for row in out["idle"]:
        if row["clients"] == 5000:
            kib = row["securechat"]["rss_kib_per_conn"]
            print(
                f"  5,000 idle TLS clients <= 30 KiB each: {kib:.1f} KiB "
                f"{'MET' if kib <= 30 else 'MISSED'}"
            )


if __name__ == "__main__":
    sys.exit(main())
