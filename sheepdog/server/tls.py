"""The callback server's TLS identity: a self-signed certificate pinned by workers.

Each database gets one certificate, made on first use and kept in the
database, so that a server restarted for an earlier request (``sheepdog
serve``) presents the certificate its workers were given. Workers trust that
certificate alone (see ``client.Client``), so no certificate authority and no
host name checks are involved.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile

from ..storage import Storage

_META_KEY = "tls_identity"
_SEPARATOR = b"\n-----SHEEPDOG KEY-----\n"


def generate_identity() -> tuple[bytes, bytes]:
    """A fresh (certificate PEM, private key PEM) pair, valid for ten years."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sheepdog callback server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def identity_for(storage: Storage) -> tuple[bytes, bytes]:
    """The database's (certificate, key), made and stored on first use."""
    stored = storage.meta(_META_KEY)
    if stored is None:
        certificate, key = generate_identity()
        stored = storage.set_meta_once(_META_KEY, certificate + _SEPARATOR + key)
    certificate, _, key = stored.partition(_SEPARATOR)
    return certificate, key


def server_context(certificate: bytes, key: bytes) -> ssl.SSLContext:
    """An SSL context serving ``certificate``; the key touches disk only briefly, 0600."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="sheepdog-tls-") as directory:
        paths = []
        for name, data in (("cert.pem", certificate), ("key.pem", key)):
            path = os.path.join(directory, name)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            paths.append(path)
        context.load_cert_chain(*paths)
    return context
