"""Certificates for a cluster: one CA, one certificate per party, client certificates.

Parties authenticate each other and their clients with mutual TLS.  The CA here is
the trust root of one cluster: a party accepts a connection only if the peer's
certificate chains to it *and* its common name is named in the cluster config, so
a certificate from another CA, or an unlisted name from this one, is refused.

Party certificates are valid for both TLS server and client use (a party listens
and connects); their subject alternative names cover localhost/127.0.0.1 plus any
hosts given, so the same files work on one machine and across machines.  Every party
certificate also carries a name that only it has, ``<party name>.veil``
(:func:`party_tls_name`): whoever connects to party i asks TLS for that name, so a
server holding another party's certificate fails the handshake (any party's certificate
is valid for every party's host, so the host name alone cannot tell them apart).  Keys are
ECDSA P-256: fast handshakes, small files.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
PARTY_NAME_SUFFIX = ".veil"


def party_tls_name(party_name: str) -> str:
    """The TLS server name only the certificate of party ``party_name`` carries."""
    return party_name + PARTY_NAME_SUFFIX


@dataclass(frozen=True)
class Identity:
    """A PEM certificate and its PEM private key."""

    cert: bytes
    key: bytes


def make_ca(name: str = "veil-cluster-ca") -> Identity:
    """A fresh self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
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
        .sign(key, hashes.SHA256())
    )
    return _identity(cert, key)


def issue(ca: Identity, name: str, hosts: tuple[str, ...] = (), server: bool = True) -> Identity:
    """A certificate for ``name`` signed by ``ca``; ``server`` (a party) adds TLS server use
    and SANs: ``hosts``, loopback and :func:`party_tls_name` of ``name``."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert)
    ca_key = serialization.load_pem_private_key(ca.key, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + (
        [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if server:
        all_hosts = dict.fromkeys((party_tls_name(name), *DEFAULT_HOSTS, *hosts))  # deduplicated
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(host) for host in all_hosts]), critical=False
        )
    return _identity(builder.sign(ca_key, hashes.SHA256()), key)


def write_cluster_certs(
    out_dir: str | Path,
    hosts: tuple[str, ...] = (),
    party_names: tuple[str, ...] = ("party0", "party1", "party2"),
    client_names: tuple[str, ...] = ("client",),
    owner_names: tuple[str, ...] = ("owner",),
) -> dict[str, Path]:
    """Write ca.pem, <name>.pem/<name>.key for every party, client and model owner.

    Clients and owners get the same kind of certificate: what an owner may do is decided
    by the cluster config (:mod:`veil.parties.authz`), not by the certificate.

    The CA key is written too (ca.key) so more client certificates can be issued later;
    keep it offline in a real deployment.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    paths = {"ca": _write(out / "ca.pem", ca.cert), "ca_key": _write_key(out / "ca.key", ca.key)}
    for name in party_names:
        ident = issue(ca, name, hosts, server=True)
        paths[name] = _write(out / f"{name}.pem", ident.cert)
        paths[f"{name}_key"] = _write_key(out / f"{name}.key", ident.key)
    for name in dict.fromkeys((*client_names, *owner_names)):
        ident = issue(ca, name, server=False)
        paths[name] = _write(out / f"{name}.pem", ident.cert)
        paths[f"{name}_key"] = _write_key(out / f"{name}.key", ident.key)
    return paths


def cluster_config_toml(
    party_names: tuple[str, ...],
    addresses: tuple[str, ...],
    clients: tuple[str, ...],
    owners: tuple[str, ...] = (),
) -> str:
    """A cluster config that uses the files written by :func:`write_cluster_certs`."""
    lines = [
        "# Written by `veil certs`; paths are relative to this file.",
        "frac_bits = 18",
        "timeout = 60.0",
        "connect_timeout = 30.0",
        "insecure = false",
        'ca = "ca.pem"',
        f"clients = {json.dumps(list(clients))}",
        "# only owners may share or replace models; [models.NAME] owners = [...]",
        "# names the owners of one model",
        f"owners = {json.dumps(list(owners))}",
    ]
    for name, address in zip(party_names, addresses, strict=True):
        lines += [
            "",
            "[[parties]]",
            f"name = {json.dumps(name)}",
            f"address = {json.dumps(address)}",
            f"cert = {json.dumps(name + '.pem')}",
            f"key = {json.dumps(name + '.key')}",
        ]
    return "\n".join(lines) + "\n"


def common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def has_dns_name(cert_pem: bytes, name: str) -> bool:
    """Whether the certificate's subject alternative names include DNS ``name``."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return name in san.get_values_for_type(x509.DNSName)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _identity(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Identity:
    return Identity(
        cert=cert.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _write_key(path: Path, data: bytes) -> Path:
    """Private keys are created owner-readable only, never world-readable even briefly."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
    return path
