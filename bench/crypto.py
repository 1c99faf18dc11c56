"""End-to-end crypto costs next to the raw primitives they are made of.

Run ``python -m bench.crypto``. For each backend it prints

* the cost of a full handshake (``handshake.initiate`` + ``handshake.respond``; prekeys are
  generated ahead, as clients do) next to the summed cost of the primitive operations the two
  sides perform in handshake v2 (2 Ed25519 verifies, 1 Ed25519 sign, 3 encapsulations and 3
  decapsulations: identity KEM, signed and one-time prekey, 1 ratchet key generation, 1
  ratchet-key validation, 2 SHA-256 transcript hashes, the KDFs), each measured raw with
  ``cryptography``;
* then the cost of a ratchet encrypt + decrypt of 256 bytes through the Session API
  (symmetric step, no new turn) next to one raw X25519 exchange.

* then the client's cost of one room message of 256 bytes to rooms of 2, 10 and 50 members
  (pairwise fan-out over established ecdh sessions: per member the stored session is
  loaded, the message encrypted, the session stored again, as ``client/sending.py`` does),
  next to the same number of raw AES-256-GCM encryptions of 256 bytes.

Targets: handshake <= 1.5x its primitives; symmetric step < one X25519 exchange. Timings are
best-of-N with ``time.perf_counter`` and bounded loop counts, so a run takes well under a
minute. For RSA the initiator's first ratchet key pair comes from a pre-generated pool (a
client keeps a few ready, since RSA key generation takes 50-500 ms with a large variance), so
neither column contains a key generation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from securechat.crypto import prekeys
from securechat.crypto.dh import silence_ffdh_deprecation
from securechat.crypto.handshake import v2 as handshake
from securechat.crypto.identity import IdentityKeyPair
from securechat.crypto.kem import IKem, get_kem
from securechat.crypto.session import Session

NOW = 1_700_000_000.0
BACKENDS: list[tuple[str, dict[str, Any]]] = [
    ("ecdh", {"curve": "x25519"}),
    ("ecdh", {"curve": "p256"}),
    ("dh", {"group": "ffdhe2048"}),
    ("dh", {"group": "ffdhe3072"}),
    ("rsa", {"bits": 2048}),
    ("rsa", {"bits": 3072}),
    ("hybrid", {"kem": "xwing"}),
]


def best(fn: Callable[[], object], number: int, repeat: int = 5) -> float:
    """Best average seconds per call over ``repeat`` runs of ``number`` calls."""
    fn()
    result = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        result = min(result, (time.perf_counter() - start) / number)
    return result


def _ed25519_ops(number: int) -> tuple[float, float]:
    key = ed25519.Ed25519PrivateKey.generate()
    public, data = key.public_key(), os.urandom(300)
    signature = key.sign(data)
    return best(lambda: key.sign(data), number), best(
        lambda: public.verify(signature, data), number
    )


def _hkdf_ops(number: int) -> tuple[float, float]:
    """Raw HKDF costs: one DHKEM ``ExtractAndExpand`` (HMAC + HKDF-Expand) and one root HKDF."""
    ikm, salt = os.urandom(32), bytes(32)
    info = b"securechat-v2 root key\x00" + bytes(32)

    def dhkem() -> bytes:
        mac = hmac.HMAC(salt, hashes.SHA256())
        mac.update(ikm)
        return HKDFExpand(hashes.SHA256(), 32, info).derive(mac.finalize())

    root = best(lambda: HKDF(hashes.SHA256(), 32, salt, info).derive(ikm * 3), number)
    return best(dhkem, number), root


def _transcript_hash_cost(kem: IKem, number: int) -> float:
    """One SHA-256 over a transcript-sized input (keys and encapsulations of this backend)."""
    pair = kem.generate_keypair()
    size = 4 * len(pair.public) + 3 * len(kem.encapsulate(pair.public)[1]) + 200
    data = os.urandom(size)

    def digest() -> bytes:
        h = hashes.Hash(hashes.SHA256())
        h.update(data)
        return h.finalize()

    return best(digest, number)


def _raw_kem_ops(name: str, params: dict[str, Any], number: int) -> dict[str, float]:
    """Raw keygen / encapsulation / decapsulation / validation costs with ``cryptography``.

    The same accounting for every backend: a party holds its own keys as objects (a key it
    made, or its prekeys loaded once), and decodes each *distinct* peer key once. The bench
    reuses one bundle, so the prekeys' public keys are decoded once in the steady state and
    only the values that are fresh in every handshake count: the two encapsulations (decoded
    by ``decaps``) and the initiator's first ratchet key (``validate``).

    Encapsulation of a DH-style KEM is an ephemeral key generation plus an exchange;
    decapsulation is decoding ``enc`` plus an exchange. ``pkR`` is the holder's own public
    key, known with its key. RSA: OAEP encrypt / decrypt of 32 bytes. X25519 validation is one
    trial exchange (the low-order check); P-256 validation is decoding the point (on-curve
    check); the FFDH subgroup check has no ``cryptography`` counterpart, so it counts as 0.
    """
    if name == "ecdh" and params["curve"] == "x25519":
        a, b = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        pub = b.public_key()
        raw_pub = pub.public_bytes_raw()
        keygen = best(x25519.X25519PrivateKey.generate, number)
        exchange = best(lambda: a.exchange(pub), number)
        decode = best(lambda: x25519.X25519PublicKey.from_public_bytes(raw_pub), number)
        return {"keygen": keygen, "encaps": keygen + exchange, "decaps": decode + exchange,
                "validate": decode + exchange}  # fmt: skip
    if name == "ecdh":
        curve = ec.SECP256R1()
        a = ec.generate_private_key(curve)
        point = (
            ec.generate_private_key(curve)
            .public_key()
            .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        )
        peer = ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        keygen = best(lambda: ec.generate_private_key(curve), number)
        exchange = best(lambda: a.exchange(ec.ECDH(), peer), number)
        decode = best(lambda: ec.EllipticCurvePublicKey.from_encoded_point(curve, point), number)
        return {"keygen": keygen, "encaps": keygen + exchange, "decaps": decode + exchange,
                "validate": decode}  # fmt: skip
    if name == "dh":
        kem = get_kem(name, params)
        with silence_ffdh_deprecation():
            engine = kem._engine  # type: ignore[attr-defined]
            a, b = engine.generate(), engine.generate()
            y = engine.public_y(b)
            peer = b.public_key()
            keygen = best(engine.generate, number)
            exchange = best(lambda: a.exchange(peer), number)
            decode = best(lambda: engine.load_public(y), number)
        return {"keygen": keygen, "encaps": keygen + exchange, "decaps": decode + exchange,
                "validate": decode}  # fmt: skip
    if name == "hybrid":
        return _raw_xwing_ops(number)
    bits = params["bits"]
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    public = key.public_key()
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    wrapped = public.encrypt(os.urandom(32), oaep)
    encrypt = best(lambda: public.encrypt(os.urandom(32), oaep), number)
    decrypt = best(lambda: key.decrypt(wrapped, oaep), max(number // 4, 3))
    validate = best(lambda: serialization.load_der_public_key(der), number)
    return {"keygen": 0.0, "encaps": encrypt, "decaps": decrypt, "validate": validate}


def _raw_xwing_ops(number: int) -> dict[str, float]:
    """X-Wing from its parts: ML-KEM-768 and X25519 with ``cryptography``, SHAKE256 and SHA3-256.

    keygen = SHAKE256 seed expansion + ML-KEM key from seed + X25519 key + both public keys;
    encaps = ML-KEM encapsulation + an X25519 key generation and exchange + the SHA3 combiner;
    decaps = ML-KEM decapsulation + an X25519 exchange + the combiner (keys held as objects);
    validate = decoding the ML-KEM public key (modulus check) + the X25519 low-order trial
    (one exchange with a throw-away key made once, as the ``ecdh`` backend does).
    """
    seed = os.urandom(32)
    sk_m = mlkem.MLKEM768PrivateKey.generate()
    pk_m_bytes = sk_m.public_key().public_bytes_raw()
    pk_m = sk_m.public_key()
    sk_x = x25519.X25519PrivateKey.generate()
    pk_x = sk_x.public_key()
    ct_m = pk_m.encapsulate()[1]

    combined = os.urandom(32 * 4) + b"\\.//^\\"

    def combiner() -> bytes:
        h = hashes.Hash(hashes.SHA3_256())
        h.update(combined)
        return h.finalize()

    def expand() -> bytes:
        h = hashes.Hash(hashes.SHAKE256(96))
        h.update(seed)
        return h.finalize()

    def keygen() -> object:
        expanded = expand()
        m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        return m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()

    exchange = best(lambda: sk_x.exchange(pk_x), number)
    combine = best(combiner, number)
    x_keygen = best(x25519.X25519PrivateKey.generate, number)
    return {
        "keygen": best(keygen, number),
        "encaps": best(pk_m.encapsulate, number) + x_keygen + exchange + combine,
        "decaps": best(lambda: sk_m.decapsulate(ct_m), number) + exchange + combine,
        "validate": best(lambda: mlkem.MLKEM768PublicKey.from_public_bytes(pk_m_bytes), number)
        + exchange,
    }


def _via_backend(kem: IKem, number: int) -> float:
    """The same KEM operations as the handshake, called through the backend (keys as bytes).

    As in the handshake, the prekey public keys repeat while each ``enc`` and ratchet key is
    new (so a backend cache of checked keys helps exactly where it helps the handshake). The
    difference from the raw column is the backend's own cost of (de)serialising and checking
    keys; what remains above this column is the protocol layer.
    """
    pair = kem.generate_keypair()
    calls = number * 5 + 1  # best() makes one warm-up call and 5 runs of ``number``
    encs: Iterator[bytes] = iter(())  # refilled before each measurement below
    fresh = kem.rotates_every_turn
    publics = iter([kem.generate_keypair().public if fresh else pair.public for _ in range(calls)])
    ops: list[tuple[int, Callable[[], object]]] = [
        (3, lambda: kem.encapsulate(pair.public)),
        (3, lambda: kem.decapsulate(pair.private, next(encs))),
        (1, lambda: kem.validate_public(next(publics))),
    ]
    if fresh:
        ops.append((1, kem.generate_keypair))
    total = 0.0
    for count, op in ops:
        encs = iter([kem.encapsulate(pair.public)[1] for _ in range(calls)])
        total += count * best(op, number)
    return total


def _handshake_cost(kem: IKem, number: int) -> float:
    alice, bob = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    ikem = kem.generate_keypair()
    spk, spk_pair = prekeys.generate_signed_prekey(
        bob, kem, 1, NOW, prekeys.DEFAULT_LIFETIME, ikem.public
    )
    [(opk, opk_pair)] = prekeys.generate_one_time_prekeys(kem, 100, 1)
    spk_blob, opk_blob, bob_public = spk.to_bytes(), opk.to_bytes(), bob.public_bytes()
    pool = None if kem.rotates_every_turn else kem.generate_keypair()

    def full() -> None:
        result = handshake.initiate(kem, alice, bob_public, spk_blob, opk_blob, NOW, pool)
        handshake.respond(
            kem, bob, ikem, result.message_bytes, lambda i: (spk, spk_pair),
            lambda i: opk_pair, lambda i, th: False, NOW,
        )  # fmt: skip

    return best(full, number)


def _ratchet_step_cost(number: int) -> float:
    kem = get_kem("ecdh", {"curve": "x25519"})
    alice_id, bob_id = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    ikem = kem.generate_keypair()
    spk, spk_pair = prekeys.generate_signed_prekey(
        bob_id, kem, 1, NOW, prekeys.DEFAULT_LIFETIME, ikem.public
    )
    alice = Session.initiate(
        kem=kem, identity=alice_id, local_user="alice", peer_user="bob",
        peer_identity=bob_id.public_bytes(), signed_prekey=spk.to_bytes(), clock=lambda: NOW,
    )  # fmt: skip
    bob = Session.respond(
        alice.encrypt(b"hi"), kem=kem, identity=bob_id, identity_kem=ikem, local_user="bob",
        find_signed_prekey=lambda i: (spk, spk_pair), find_one_time_prekey=lambda i: None,
        replayed=lambda i, th: False, clock=lambda: NOW,
    ).session  # fmt: skip
    alice.decrypt(bob.encrypt(b"turn"))
    bob.decrypt(alice.encrypt(b"turn"))
    plaintext = os.urandom(256)
    return best(lambda: bob.decrypt(alice.encrypt(plaintext)), number, repeat=9)


def _room_send_cost(members: int, number: int) -> tuple[float, float]:
    """(protocol, raw AES-GCM) seconds for one room message to ``members - 1`` others."""
    kem = get_kem("ecdh", {"curve": "x25519"})
    alice_id = IdentityKeyPair.generate()
    blobs: list[bytes] = []
    for i in range(members - 1):
        peer_id = IdentityKeyPair.generate()
        ikem = kem.generate_keypair()
        spk, spk_pair = prekeys.generate_signed_prekey(
            peer_id, kem, 1, NOW, prekeys.DEFAULT_LIFETIME, ikem.public
        )
        alice = Session.initiate(
            kem=kem, identity=alice_id, local_user="alice", peer_user=f"m{i}",
            peer_identity=peer_id.public_bytes(), signed_prekey=spk.to_bytes(),
            clock=lambda: NOW,
        )  # fmt: skip
        peer = Session.respond(
            alice.encrypt(b"hi"), kem=kem, identity=peer_id, identity_kem=ikem,
            local_user=f"m{i}", find_signed_prekey=lambda _, s=spk, p=spk_pair: (s, p),
            find_one_time_prekey=lambda _: None, replayed=lambda i, th: False,
            clock=lambda: NOW,
        ).session  # fmt: skip
        alice.decrypt(peer.encrypt(b"turn"))
        blobs.append(alice.to_bytes())
    plaintext = os.urandom(256)

    def fan_out() -> None:
        for i, blob in enumerate(blobs):
            session = Session.from_bytes(blob, lambda _: kem, clock=lambda: NOW)
            session.encrypt(plaintext, room="#ops")
            blobs[i] = session.to_bytes()

    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)

    def raw() -> None:
        for _ in blobs:
            aead.encrypt(nonce, plaintext, None)

    return best(fan_out, number), best(raw, number * 10)


def main() -> None:
    sign, verify = _ed25519_ops(2000)
    dhkem_kdf, root_kdf = _hkdf_ops(2000)
    print(
        f"{'backend':<14}{'handshake':>11}{'primitives':>12}{'ratio':>7}   target <= 1.5"
        f"   | KEM ops via backend   protocol layer"
    )
    for name, params in BACKENDS:
        kem = get_kem(name, params)
        slow = name not in ("ecdh", "hybrid")
        number = 10 if slow else 300
        raw = _raw_kem_ops(name, params, number)
        kdfs = 2 * root_kdf + (0 if name in ("rsa", "hybrid") else 6 * dhkem_kdf)
        transcript = 2 * _transcript_hash_cost(kem, number)
        primitives = (
            2 * verify + sign + 3 * raw["encaps"] + 3 * raw["decaps"] + raw["keygen"]
            + raw["validate"] + kdfs + transcript
        )  # fmt: skip
        cost = _handshake_cost(kem, number)
        via = _via_backend(kem, number)
        label = f"{kem.name}:{kem.params}"
        ratio = cost / primitives
        protocol = cost - via - 2 * verify - sign - 2 * root_kdf - transcript
        kem_raw = primitives - 2 * verify - sign - 2 * root_kdf - transcript
        print(f"{label:<14}{cost * 1e3:>9.3f}ms{primitives * 1e3:>10.3f}ms{ratio:>7.2f}"
              f"   {'ok  ' if ratio <= 1.5 else 'OVER'}"
              f"            | {via * 1e3:>9.3f}ms ({via / kem_raw:.2f}x raw)"
              f"   {protocol * 1e6:>7.0f}us")  # fmt: skip
    exchange_key = x25519.X25519PrivateKey.generate()
    peer = x25519.X25519PrivateKey.generate().public_key()
    exchange = best(lambda: exchange_key.exchange(peer), 3000, repeat=9)
    step = _ratchet_step_cost(3000)
    print(
        f"\nratchet encrypt+decrypt 256 B (no new turn): {step * 1e6:.1f} us; "
        f"one X25519 exchange: {exchange * 1e6:.1f} us; ratio {step / exchange:.2f} "
        f"(target < 1: {'ok' if step < exchange else 'OVER'})"
    )
    print("\nroom message of 256 B, pairwise fan-out (client side, one sender):")
    for members in (2, 10, 50):
        cost, raw = _room_send_cost(members, max(3, 200 // members))
        print(f"  {members:>3} members: {cost * 1e3:8.3f} ms "
              f"({cost / (members - 1) * 1e6:6.1f} us per recipient); "
              f"raw AES-256-GCM x{members - 1}: {raw * 1e3:7.3f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
