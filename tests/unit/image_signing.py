"""An OpenPGP signer for the tests: v4 RSA keys and clear-signed messages, in Python.

The tests need InRelease files that a real archive would never serve (expired,
signed with SHA-1). gpg refuses to make SHA-1 signatures by default and would
need a home directory and agent; this writes the packets of RFC 4880 directly.
The key is made from a seeded random generator: the same key every run, and
no private key in the repository.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass

HASH_IDS = {"sha1": 2, "sha256": 8, "sha512": 10}
DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
CREATED = 1_700_000_000


def _is_prime(n: int, rng: random.Random) -> bool:
    if n < 4:
        return n in (2, 3)
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, rng: random.Random) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if _is_prime(n, rng):
            return n


def _mpi(n: int) -> bytes:
    return n.bit_length().to_bytes(2, "big") + n.to_bytes((n.bit_length() + 7) // 8, "big")


def _packet(tag: int, body: bytes) -> bytes:
    # New-format header with a two-byte or five-byte length.
    if len(body) < 192:
        length = bytes([len(body)])
    elif len(body) < 8384:
        n = len(body) - 192
        length = bytes([(n >> 8) + 192, n & 0xFF])
    else:
        length = b"\xff" + len(body).to_bytes(4, "big")
    return bytes([0xC0 | tag]) + length + body


def _subpacket(kind: int, value: bytes) -> bytes:
    return bytes([len(value) + 1, kind]) + value


@dataclass(frozen=True)
class SigningKey:
    n: int
    e: int
    d: int

    @property
    def body(self) -> bytes:
        return b"\x04" + CREATED.to_bytes(4, "big") + b"\x01" + _mpi(self.n) + _mpi(self.e)

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha1(b"\x99" + len(self.body).to_bytes(2, "big") + self.body).digest()

    def keyring(self) -> bytes:
        """A binary keyring with this public key (a user ID is not needed by the reader)."""
        return _packet(6, self.body)

    def sign(self, text: str, hash_name: str = "sha256") -> str:
        """A clear-signed message of ``text`` (lines without trailing blanks)."""
        canonical = "\r\n".join(text.split("\n")).encode()
        hashed = _subpacket(2, CREATED.to_bytes(4, "big")) + _subpacket(
            33, b"\x04" + self.fingerprint
        )
        head = bytes([4, 0x01, 1, HASH_IDS[hash_name]]) + len(hashed).to_bytes(2, "big") + hashed
        h = hashlib.new(hash_name, canonical)
        h.update(head)
        h.update(b"\x04\xff" + len(head).to_bytes(4, "big"))
        digest = h.digest()
        k = (self.n.bit_length() + 7) // 8
        info = DIGEST_INFO[hash_name] + digest
        encoded = b"\x00\x01" + b"\xff" * (k - 3 - len(info)) + b"\x00" + info
        s = pow(int.from_bytes(encoded, "big"), self.d, self.n)
        unhashed = _subpacket(16, self.fingerprint[-8:])
        body = head + len(unhashed).to_bytes(2, "big") + unhashed + digest[:2] + _mpi(s)
        armor = base64.b64encode(_packet(2, body)).decode()
        lines = [armor[i : i + 64] for i in range(0, len(armor), 64)]
        escaped = "\n".join("- " + ln if ln.startswith("-") else ln for ln in text.split("\n"))
        return (
            "-----BEGIN PGP SIGNED MESSAGE-----\n"
            f"Hash: {hash_name.upper()}\n\n{escaped}\n"
            "-----BEGIN PGP SIGNATURE-----\n\n" + "\n".join(lines) + "\n"
            "-----END PGP SIGNATURE-----\n"
        )


def make_key(seed: int = 1, bits: int = 1024) -> SigningKey:
    """An RSA key, the same for the same seed."""
    rng = random.Random(seed)
    e = 65537
    while True:
        p, q = _prime(bits // 2, rng), _prime(bits // 2, rng)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e:
            return SigningKey(p * q, e, pow(e, -1, phi))
