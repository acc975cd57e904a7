"""The stack's own certificate authority, for mutual TLS between clients and the gateway.

`create_ca` makes a CA (EC P-256, valid a year) in a directory of the run; `issue` signs a server
certificate (with its DNS names and addresses) or a client certificate whose common name is the client's
name; the gateway looks that name up like an API key's client. `server_context` asks clients for a
certificate but does not require one (CERT_OPTIONAL), so API keys and bearer tokens keep working on the
same port; a certificate that does not chain to the CA fails the handshake.

Private keys are written 0600 next to their certificates; they never leave the run directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


@dataclass(frozen=True)
class Pki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Kata Lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def create_ca(directory: Path, common_name: str = "Kata Lab gateway CA") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(pki.ca_key, key)
    pki.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pki


def ensure_ca(directory: Path) -> Pki:
    """The stack's CA in `directory`, made on first use (the admin service does it before the nodes start)."""
    pki = Pki(directory)
    return pki if pki.ca_cert.is_file() and pki.ca_key.is_file() else create_ca(directory)


def issue(pki: Pki, common_name: str, *, server_names: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A certificate for a server (`server_names`: DNS names or IP addresses) or, without them, a client.
    Returns the paths of the certificate and its private key."""
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an EC key")
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server_names:
        alternatives: list[x509.GeneralName] = []
        for name in server_names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    stem = pki.directory / common_name.replace("/", "_")
    cert_path, key_path = stem.with_suffix(".crt"), stem.with_suffix(".key")
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def server_context(pki: Pki, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca_cert))
    context.load_cert_chain(cert, key)
    context.verify_mode = ssl.CERT_OPTIONAL  # API keys and tokens still work without a certificate
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if cert is not None and key is not None:
        context.load_cert_chain(cert, key)
    return context


def common_name(peercert: object) -> str | None:
    """The subject's common name from `ssl.SSLSocket.getpeercert()`'s dict, or None."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for attribute, value in rdn:
            if attribute == "commonName":
                return str(value)
    return None
