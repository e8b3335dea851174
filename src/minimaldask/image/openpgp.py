"""Check the OpenPGP signature of a clear-signed Debian ``InRelease`` file, in Python.

Enough of OpenPGP (RFC 4880) for the Debian archive: version 4 RSA keys
from a binary keyring, version 4 RSA signatures of canonical text with
SHA-2. SHA-1 signatures are refused (collisions can be made for them, and
apt refuses them too). No ``gpgv`` is needed, so the image checks what it fetches for
``EXTRA_OS_PACKAGES`` with the Debian archive keyring it carries. Key
expiry and revocation are not checked: the keyring is the trust anchor.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from minimaldask.exceptions import MinimalDaskError

__all__ = ["SignatureError", "load_keyring", "verify_clearsigned"]

HASHES = {
    8: ("sha256", bytes.fromhex("3031300d060960864801650304020105000420")),
    9: ("sha384", bytes.fromhex("3041300d060960864801650304020205000430")),
    10: ("sha512", bytes.fromhex("3051300d060960864801650304020305000440")),
    11: ("sha224", bytes.fromhex("302d300d06096086480165030402040500041c")),
}
RSA_ALGORITHMS = (1, 3)  # RSA (encrypt or sign), RSA sign-only
SHA1 = 2


class SignatureError(MinimalDaskError):
    """A signature is missing, malformed, or made by no key of the keyring."""


@dataclass(frozen=True)
class RSAKey:
    """An RSA public key or subkey with its v4 fingerprint."""

    fingerprint: bytes
    n: int
    e: int

    @property
    def key_id(self) -> bytes:
        """The last 8 bytes of the fingerprint."""
        return self.fingerprint[-8:]


def _packets(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(data):
        ctb = data[pos]
        pos += 1
        if not ctb & 0x80:
            raise SignatureError("not OpenPGP data")
        if ctb & 0x40:
            tag = ctb & 0x3F
            first = data[pos]
            pos += 1
            if first < 192:
                length = first
            elif first < 224:
                length = ((first - 192) << 8) + data[pos] + 192
                pos += 1
            elif first == 255:
                length = int.from_bytes(data[pos : pos + 4], "big")
                pos += 4
            else:
                raise SignatureError("partial-length OpenPGP packets are not supported")
        else:
            tag = (ctb >> 2) & 0x0F
            size = {0: 1, 1: 2, 2: 4}.get(ctb & 3)
            if size is None:
                length = len(data) - pos
            else:
                length = int.from_bytes(data[pos : pos + size], "big")
                pos += size
        yield tag, data[pos : pos + length]
        pos += length


def _mpi(data: bytes, pos: int) -> tuple[int, int]:
    bits = int.from_bytes(data[pos : pos + 2], "big")
    end = pos + 2 + (bits + 7) // 8
    return int.from_bytes(data[pos + 2 : end], "big"), end


def load_keyring(data: bytes) -> list[RSAKey]:
    """The v4 RSA keys and subkeys of a binary keyring; other keys are skipped."""
    keys = []
    for tag, body in _packets(data):
        if tag not in (6, 14) or not body or body[0] != 4 or body[5] not in RSA_ALGORITHMS:
            continue
        n, pos = _mpi(body, 6)
        e, _ = _mpi(body, pos)
        header = b"\x99" + len(body).to_bytes(2, "big")
        keys.append(RSAKey(hashlib.sha1(header + body).digest(), n, e))
    return keys


def _subpackets(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(data):
        first = data[pos]
        if first < 192:
            length, pos = first, pos + 1
        elif first < 255:
            length, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
        else:
            length, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
        yield data[pos] & 0x7F, data[pos + 1 : pos + length]
        pos += length


def _armored(block: str) -> bytes:
    """Decode the base64 of an armored block (the text after its BEGIN line)."""
    lines = block.split("\n")[1:]
    while lines and ":" in lines[0] and lines[0].strip():  # armor headers
        lines.pop(0)
    payload = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(("=", "-----"))]
    try:
        return base64.b64decode("".join(payload), validate=True)
    except ValueError as e:
        raise SignatureError(f"malformed signature armor: {e}") from e


def _canonical_text(text: str) -> bytes:
    lines = text.split("\n")
    return "\r\n".join(line.rstrip(" \t\r") for line in lines).encode("utf-8")


def _verify_one(sig: bytes, text: bytes, keys: list[RSAKey]) -> RSAKey | None:
    if len(sig) < 6 or sig[0] != 4 or sig[2] not in RSA_ALGORITHMS or sig[3] not in HASHES:
        return None
    hashed_len = int.from_bytes(sig[4:6], "big")
    hashed_end = 6 + hashed_len
    unhashed_len = int.from_bytes(sig[hashed_end : hashed_end + 2], "big")
    rest = hashed_end + 2 + unhashed_len
    left16 = sig[rest : rest + 2]
    s, _ = _mpi(sig, rest + 2)
    issuers = set()
    for area in (sig[6:hashed_end], sig[hashed_end + 2 : rest]):
        for kind, value in _subpackets(area):
            if kind == 16:
                issuers.add(value)
            elif kind == 33:
                issuers.add(value[1:][-8:])
    name, prefix = HASHES[sig[3]]
    h = hashlib.new(name, text)
    h.update(sig[:hashed_end])
    h.update(b"\x04\xff" + hashed_end.to_bytes(4, "big"))
    digest = h.digest()
    if digest[:2] != left16:
        return None
    for key in keys:
        if issuers and key.key_id not in issuers:
            continue
        k = (key.n.bit_length() + 7) // 8
        info = prefix + digest
        expected = b"\x00\x01" + b"\xff" * (k - 3 - len(info)) + b"\x00" + info
        if pow(s, key.e, key.n).to_bytes(k, "big") == expected:
            return key
    return None


def verify_clearsigned(message: str, keyring: bytes) -> tuple[str, str]:
    """Check a clear-signed message; return its text and the signing key's fingerprint.

    Raises :class:`SignatureError` unless at least one signature is made by
    a key of ``keyring`` and matches the text.
    """
    head, sep, rest = message.partition("\n\n")
    if not head.startswith("-----BEGIN PGP SIGNED MESSAGE-----") or not sep:
        raise SignatureError("not a clear-signed message")
    body, marker, armor = rest.partition("\n-----BEGIN PGP SIGNATURE-----")
    if not marker:
        raise SignatureError("the clear-signed message has no signature")
    text = "\n".join(line[2:] if line.startswith("- ") else line for line in body.split("\n"))
    keys = load_keyring(keyring)
    canonical = _canonical_text(text)
    sha1 = 0
    for tag, packet in _packets(_armored(armor.partition("-----END PGP SIGNATURE-----")[0])):
        if tag != 2:
            continue
        if len(packet) > 3 and packet[0] == 4 and packet[3] == SHA1:
            sha1 += 1
            continue
        key = _verify_one(packet, canonical, keys)
        if key is not None:
            return text, key.fingerprint.hex().upper()
    if sha1:
        raise SignatureError(
            f"{sha1} signature(s) use SHA-1, which is refused (SHA-1 collisions can be made);"
            " no SHA-2 signature by a key of the keyring matches"
        )
    raise SignatureError("no signature by a key of the keyring matches")
