"""Generate *our own* X-Wing vectors (``xwing-securechat.json``); not the draft's.

The published vectors of draft-connolly-cfrg-xwing-kem (its appendix) could not be obtained
on the machine this was written on, so this file is labelled as ours: the keys come from
seeds drawn from a SHA-256 counter-mode generator (as ``generate.py``), each with one
encapsulation made by :class:`securechat.crypto.xwing.XWingKem` at generation time.
``cryptography``'s ML-KEM encapsulation draws its own randomness, so the ciphertexts cannot
be regenerated: the file is written once (``python tests/vectors/generate_xwing.py``) and the
test checks key generation and decapsulation against it, recomputing the X-Wing seed
expansion and combiner independently with ``hashlib``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from securechat.crypto.xwing import XWingKem, expand_seed

SEED = b"securechat X-Wing vectors (ours, not the draft's)"
VECTOR_FILE = Path(__file__).with_name("xwing-securechat.json")


def _seed(i: int) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(SEED + i.to_bytes(4, "big"))
    return digest.finalize()


def generate(count: int = 4) -> dict[str, object]:
    kem = XWingKem()
    vectors = []
    for i in range(count):
        seed = _seed(i)
        public = expand_seed(seed)[2]
        ss, ct = kem.encapsulate(public)
        assert kem.decapsulate(seed, ct) == ss
        vectors.append({"seed": seed.hex(), "pk": public.hex(), "ct": ct.hex(), "ss": ss.hex()})
    return {
        "source": "securechat's own vectors (NOT the draft's published ones), made by "
        "tests/vectors/generate_xwing.py with cryptography's ML-KEM-768 and X25519",
        "spec": "draft-connolly-cfrg-xwing-kem (expandDecapsulationKey with SHAKE256(sk, 96),"
        " combiner SHA3-256(ss_M || ss_X || ct_X || pk_X || label))",
        "seed": SEED.decode(),
        "vectors": vectors,
    }


def main() -> int:
    VECTOR_FILE.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {VECTOR_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
