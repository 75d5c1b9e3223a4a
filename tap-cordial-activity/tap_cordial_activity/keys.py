"""SSH keys from settings: expected host keys (ssh-keyscan lines) and the tap's private key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass

import paramiko

_KEY_CLASSES: tuple[type[paramiko.PKey], ...] = (
    paramiko.Ed25519Key,
    paramiko.ECDSAKey,
    paramiko.RSAKey,
)


@dataclass(frozen=True)
class HostKey:
    """One expected host key: type name and base64 blob (from ssh-keyscan or known_hosts)."""

    key_type: str
    key_base64: str

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style SHA256 fingerprint."""
        return fingerprint(base64.b64decode(self.key_base64))


def fingerprint(blob: bytes) -> str:
    """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_host_keys(text: str) -> list[HostKey]:
    """Parse ``sftp_host_key``: ssh-keyscan lines, or bare ``type b64`` lines.

    ssh-keyscan lines are ``host type b64`` or ``[host]:port type b64``; ``#`` comments and blank
    lines are ignored. Raises ``ValueError`` naming the offending line number.
    """
    keys: list[HostKey] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if _looks_like_key_type(fields[0]) and len(fields) >= 2:
            key_type, blob = fields[0], fields[1]
        elif len(fields) >= 3 and _looks_like_key_type(fields[1]):
            key_type, blob = fields[1], fields[2]
        else:
            raise ValueError(
                f"line {number} is neither `host keytype base64` (as ssh-keyscan prints it) "
                "nor `keytype base64`"
            )
        try:
            decoded = base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"line {number}: the key is not valid base64") from exc
        if not decoded:
            raise ValueError(f"line {number}: the key is empty")
        keys.append(HostKey(key_type, blob))
    if not keys:
        raise ValueError("no key found (expected lines as `ssh-keyscan -p PORT HOST` prints them)")
    return keys


def _looks_like_key_type(token: str) -> bool:
    return token.startswith(("ssh-", "ecdsa-", "sk-"))


def load_private_key(text: str, passphrase: str | None) -> paramiko.PKey:
    """Load an Ed25519, ECDSA or RSA private key from its text; ``ValueError`` says what is wrong.

    The message never contains the key or the passphrase.
    """
    needs_passphrase = False
    for key_class in _KEY_CLASSES:
        try:
            return key_class.from_private_key(io.StringIO(text), password=passphrase or None)
        except paramiko.PasswordRequiredException:
            needs_passphrase = True
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    if needs_passphrase and not passphrase:
        raise ValueError("the private key is encrypted: set `sftp_private_key_passphrase`")
    if passphrase:
        raise ValueError(
            "the private key could not be loaded: wrong `sftp_private_key_passphrase`, or not an "
            "Ed25519, ECDSA or RSA private key in OpenSSH or PEM format"
        )
    raise ValueError(
        "`sftp_private_key` is not an Ed25519, ECDSA or RSA private key in OpenSSH or PEM format"
    )
