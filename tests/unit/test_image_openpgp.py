"""The OpenPGP check of InRelease files, against a key and signature made with gpg,
and against signatures made in Python (tests/unit/image_signing.py) that gpg would not make."""

from pathlib import Path

import pytest
from image_signing import make_key

from minimaldask.image import openpgp
from minimaldask.image.openpgp import SignatureError, load_keyring, verify_clearsigned

DATA = Path(__file__).parent / "data"
FINGERPRINT = "549509E8377D3828B9457782F50156DF76A242A8"


@pytest.fixture
def signed():
    return (DATA / "InRelease.signed").read_text()


@pytest.fixture
def keyring():
    return (DATA / "test-keyring.gpg").read_bytes()


def test_keyring_holds_the_rsa_key(keyring):
    (key,) = load_keyring(keyring)
    assert key.fingerprint.hex().upper() == FINGERPRINT


def test_good_signature_returns_the_signed_text(signed, keyring):
    text, fingerprint = verify_clearsigned(signed, keyring)
    assert fingerprint == FINGERPRINT
    assert text.splitlines()[0] == "Origin: Test"
    assert "- a line with a dash" in text.splitlines()  # dash-escaping undone


def test_trailing_whitespace_is_not_signed(signed, keyring):
    assert verify_clearsigned(signed.replace("Label: Test  \n", "Label: Test\n"), keyring)


def test_changed_text_is_refused(signed, keyring):
    with pytest.raises(SignatureError, match="no signature by a key of the keyring matches"):
        verify_clearsigned(signed.replace("Suite: stable", "Suite: testing"), keyring)


def test_other_keyring_is_refused(signed):
    other = make_key(seed=2).keyring()
    assert load_keyring(other), "the other keyring must hold a key for this test to mean anything"
    with pytest.raises(SignatureError, match="no signature by a key of the keyring matches"):
        verify_clearsigned(signed, other)


def test_empty_keyring_is_refused(signed):
    with pytest.raises(SignatureError, match="no signature by a key of the keyring matches"):
        verify_clearsigned(signed, b"")


def test_signature_made_in_python_is_accepted():
    key = make_key()
    text = "Origin: Debian\nSuite: testing\n- dashed line"
    assert verify_clearsigned(key.sign(text), key.keyring()) == (
        text,
        key.fingerprint.hex().upper(),
    )


def test_sha1_signature_is_refused_although_valid(monkeypatch):
    key = make_key()
    message = key.sign("Origin: Debian\nSuite: testing", hash_name="sha1")
    with pytest.raises(SignatureError, match="use SHA-1, which is refused"):
        verify_clearsigned(message, key.keyring())
    # The same message passes once SHA-1 is allowed: the refusal is the hash, not a bad signature.
    monkeypatch.setattr(openpgp, "SHA1", -1)
    monkeypatch.setitem(
        openpgp.HASHES, 2, ("sha1", bytes.fromhex("3021300906052b0e03021a05000414"))
    )
    assert verify_clearsigned(message, key.keyring())[1] == key.fingerprint.hex().upper()


def test_unsigned_text_is_refused(keyring):
    with pytest.raises(SignatureError, match="not a clear-signed message"):
        verify_clearsigned("Origin: Debian\n", keyring)
