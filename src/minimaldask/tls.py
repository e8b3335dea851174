"""Each cluster's own certificate authority: TLS with mutual authentication by default.

A dask scheduler runs the code its clients send: whoever can connect to it owns
it. So every cluster on Kubernetes gets a CA of its own, made here on the
client, and two certificates it signs: one its scheduler and workers share, and
one for its clients. They live in the cluster's Secret (``NAME-tls``, owned
by the cluster, deleted with it); the pods mount the first, and a handle that
attaches later (``from_name``, the CLI) reads the second. The CA's key is not
kept: nothing can be signed for the cluster after it was made.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from distributed.security import Security

from minimaldask import contract

#: How long the certificates are valid: longer than any cluster should live.
VALIDITY = datetime.timedelta(days=365)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@dataclass(frozen=True)
class Credentials:
    """A cluster's CA certificate, and the certificates and keys of its members and clients."""

    ca: str
    cert: str
    key: str
    client_cert: str
    client_key: str

    @classmethod
    def make(cls, cluster: str, hosts: list[str]) -> Credentials:
        """A new CA for ``cluster``, and the two certificates it signs (``hosts`` as names)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = _key()
        ca_name = _name(f"minimaldask {cluster} CA")
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(common: str, names: list[str]) -> tuple[str, str]:
            key = _key()
            builder = (
                x509.CertificateBuilder()
                .subject_name(_name(common))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage(
                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    ),
                    critical=False,
                )
            )
            if names:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
                )
            return _pem(builder.sign(ca_key, hashes.SHA256())), _pem_key(key)

        cert, key = leaf(f"minimaldask {cluster}", hosts)
        client_cert, client_key = leaf(f"minimaldask {cluster} client", [])
        return cls(_pem(ca), cert, key, client_cert, client_key)

    def files(self) -> dict[str, str]:
        """Every file, by its name in the Secret (see :mod:`minimaldask.contract`)."""
        return {
            contract.TLS_CA: self.ca,
            contract.TLS_CERT: self.cert,
            contract.TLS_KEY: self.key,
            contract.TLS_CLIENT_CERT: self.client_cert,
            contract.TLS_CLIENT_KEY: self.client_key,
        }

    @classmethod
    def from_files(cls, files: dict[str, str]) -> Credentials:
        """The credentials as a Secret holds them; a missing file raises KeyError."""
        return cls(
            files[contract.TLS_CA],
            files[contract.TLS_CERT],
            files[contract.TLS_KEY],
            files[contract.TLS_CLIENT_CERT],
            files[contract.TLS_CLIENT_KEY],
        )

    def security(self) -> Security:
        """How a client of the cluster connects: TLS only, with its client certificate."""
        return Security(
            tls_ca_file=self.ca,
            tls_client_cert=self.client_cert,
            tls_client_key=self.client_key,
            require_encryption=True,
        )
