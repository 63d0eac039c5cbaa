"""A throw-away PKI for DICOM TLS tests: a CA, a server certificate and client certificates."""

from __future__ import annotations

import datetime
from pathlib import Path


def make_pki(directory: Path, clients: tuple[str, ...] = ("client",)) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and one client certificate per name.

    Files ``<stem>.key`` and ``<stem>.crt`` in ``directory``; the client
    certificates' subjects are ``CN=<name>``. Returns ``{"<stem>_<suffix>": path}``.
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    write("ca", ca_key, ca)
    for serial, stem in enumerate(("server", *clients), start=2):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(stem))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        if stem == "server":
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        write(stem, key, builder.sign(ca_key, hashes.SHA256()))
    return {p.stem + "_" + p.suffix[1:]: p for p in directory.iterdir()}


def tls_security(pki: dict[str, Path]) -> dict[str, str]:
    """The ``[security]`` settings of a node serving DICOM TLS with ``pki``'s server
    certificate and requiring client certificates of its CA."""
    return {
        "tls_certificate": str(pki["server_crt"]),
        "tls_private_key": str(pki["server_key"]),
        "tls_ca_certificates": str(pki["ca_crt"]),
    }
