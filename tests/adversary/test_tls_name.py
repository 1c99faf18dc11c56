"""A relay with a certificate from the trusted CA that does not name the server."""

from __future__ import annotations

import ipaddress

import pytest_twisted
from cryptography import x509

from tests.adversary.arena import Arena


async def _refused(arena: Arena, cert: tuple[bytes, bytes], user: str) -> str:
    relay = arena.new_relay(*cert)
    try:
        client = arena.client(user, register=True, host="localhost", relay=relay)
        exit = await client.wait_exit()
    finally:
        await relay.stop()
    assert exit.code == 1, exit
    assert "Traceback" not in exit.stderr, exit.stderr
    [line] = exit.stderr_lines
    assert line.startswith("securechat-client: error: "), line
    # Nothing inside TLS ever left the client: no hello, no password.
    assert relay.frames == []
    return line


@pytest_twisted.ensureDeferred
async def test_certificate_without_subject_alt_name_is_refused(arena: Arena) -> None:
    """CN ``evil.example``, no subjectAltName, from the CA the client trusts, for
    ``--server localhost``: refused with one line saying why."""
    line = await _refused(arena, arena.issue_server_cert("evil.example", None), "san-alice")
    assert "no subjectAltName" in line and "localhost" in line and "evil.example" in line


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_name_is_refused(arena: Arena) -> None:
    """A subjectAltName for other names (the CN says localhost) is refused too."""
    san = [x509.DNSName("evil.example"), x509.IPAddress(ipaddress.ip_address("127.0.0.2"))]
    line = await _refused(arena, arena.issue_server_cert("localhost", san), "san-bob")
    assert "names 127.0.0.2, evil.example, not localhost" in line


@pytest_twisted.ensureDeferred
async def test_the_servers_own_certificate_is_accepted(arena: Arena) -> None:
    """The control: the same client against the daemon's certificate logs in."""
    client = arena.client("san-carol", register=True, host="localhost")
    await client.logged_in()
    await client.finish()
