"""The OpenPGP check of InRelease files, against a key and signature made with gpg."""

from pathlib import Path

import pytest

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
    debian = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
    other = debian.read_bytes() if debian.exists() else b""
    with pytest.raises(SignatureError):
        verify_clearsigned(signed, other)


def test_unsigned_text_is_refused(keyring):
    with pytest.raises(SignatureError, match="not a clear-signed message"):
        verify_clearsigned("Origin: Debian\n", keyring)
