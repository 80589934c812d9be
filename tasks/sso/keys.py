"""The IdP's signing key and certificate: read, or made on first start when both are absent.

Rotation (docs/sso.md): make a new pair beside the old one, give each application the new
certificate (most accept two during the change), point ``sso.signing_key``/``signing_cert`` at
the new pair and restart.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tasks.errors import ConfigError


def ensure_signing_pair(key_file: Path, cert_file: Path, common_name: str) -> bool:
    """Make an RSA-3072 key (0600) and a 10-year self-signed certificate when both files are
    absent; return whether they were made. One without the other is an error."""
    if key_file.exists() and cert_file.exists():
        return False
    if key_file.exists() or cert_file.exists():
        have, missing = (key_file, cert_file) if key_file.exists() else (cert_file, key_file)
        raise ConfigError(
            f"sso: {have} exists but {missing} does not (both, or neither to make them)"
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_file.parent.mkdir(parents=True, exist_ok=True)
    cert_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return True
