"""Where the keystore lives: the same place however the server is spelt, legacy places moved."""

from __future__ import annotations

from pathlib import Path

import pytest

from securechat.client.home import (
    HomeError,
    ca_identity,
    default_home,
    legacy_home,
    locate,
    read_ca,
)
from securechat.client.keystore import TEST_KDF, Keystore
from securechat.tls import _cert_pem, _make_ca


@pytest.fixture(autouse=True)
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "securechat"


@pytest.fixture
def ca() -> bytes:
    return _cert_pem(_make_ca()[0])


def _keystore(home: Path, user: str = "alice") -> None:
    Keystore.create(home, "pw", user, b"\x01" * 32, params=TEST_KDF)


def test_one_place_for_every_spelling_of_the_server(ca: bytes, xdg: Path) -> None:
    """localhost and 127.0.0.1 (and LOCALHOST.) give the same place under one CA."""
    places = {default_home("alice", h, 8443, ca) for h in ("localhost", "127.0.0.1", "LOCALHOST.")}
    assert places == {xdg / f"alice@ca-{ca_identity(ca)}_8443"}


def test_other_ca_other_port_other_user_other_place(ca: bytes) -> None:
    other = _cert_pem(_make_ca()[0])
    here = default_home("alice", "localhost", 8443, ca)
    assert default_home("alice", "localhost", 8443, other) != here
    assert default_home("alice", "localhost", 9443, ca) != here
    assert default_home("bob", "localhost", 8443, ca) != here


def test_platform_trust_uses_the_canonical_host_name(xdg: Path) -> None:
    assert default_home("alice", "Chat.Example.", 443, None) == xdg / "alice@chat.example_443"
    assert default_home("alice", "[::1]", 443, None) == xdg / "alice@::1_443"


def test_read_ca_refuses_what_is_not_a_certificate(tmp_path: Path, ca: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("this is not a certificate\n")
    with pytest.raises(HomeError, match=r"--ca .*bad\.pem is not a PEM certificate"):
        read_ca(bad)
    with pytest.raises(HomeError, match=r"cannot read CA file .*none\.pem: No such file"):
        read_ca(tmp_path / "none.pem")
    good = tmp_path / "ca.pem"
    good.write_bytes(ca)
    assert read_ca(good) == ca


def test_legacy_keystore_is_moved_once(ca: bytes) -> None:
    """A keystore made under the old USER@HOST_PORT scheme moves to the CA-keyed place."""
    old = legacy_home("alice", "localhost", 8443)
    _keystore(old)
    loc = locate("alice", "localhost", 8443, ca, None)
    assert loc.moved_from == old and loc.home == default_home("alice", "localhost", 8443, ca)
    assert Keystore.exists(loc.home) and not old.exists()
    again = locate("alice", "127.0.0.1", 8443, ca, None)  # the other spelling finds it now
    assert again.home == loc.home and again.moved_from is None


def test_missing_keystore_says_where_it_looked(ca: bytes) -> None:
    _keystore(legacy_home("alice", "localhost", 8443))  # made under the other spelling
    loc = locate("alice", "127.0.0.1", 8443, ca, None)
    assert loc.moved_from is None and not Keystore.exists(loc.home)
    text = loc.describe_missing("alice")
    assert str(Keystore.file_for(loc.home)) in text
    assert str(Keystore.file_for(legacy_home("alice", "127.0.0.1", 8443))) in text
    assert str(legacy_home("alice", "localhost", 8443)) in text and "--home" in text
    assert "--register" in text and "\n" not in text


def test_explicit_home_is_used_as_is(tmp_path: Path, ca: bytes) -> None:
    loc = locate("alice", "localhost", 8443, ca, tmp_path / "mine")
    assert (loc.home, loc.explicit, loc.moved_from) == (tmp_path / "mine", True, None)
    assert "other keystores" not in loc.describe_missing("alice")


def test_one_client_per_keystore(tmp_path: Path) -> None:
    """A second lock on the same home is refused with the holder's pid."""
    import os

    from securechat.client.home import lock_home

    fd = lock_home(tmp_path / "home")
    try:
        with pytest.raises(
            HomeError, match=rf"in use by another securechat-client \(pid {os.getpid()}\)"
        ):
            lock_home(tmp_path / "home")
    finally:
        os.close(fd)
    os.close(lock_home(tmp_path / "home"))  # free again once the holder is gone
