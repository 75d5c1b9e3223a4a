"""What every sandbox SFTP server offers, and the Ed25519 keys they make.

Below both :mod:`sandbox.sftp` (OpenSSH) and :mod:`sandbox.sftp_fallback` (paramiko).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.service import LocalService

__all__ = ["SftpServer", "generate_ed25519_key"]


class SftpServer(LocalService):
    """What every sandbox SFTP server offers (see docs/design.md, "sandbox.sftp")."""

    kind: str = ""

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.username = ""
        self.password = ""
        self.root = Path()
        self.sftp_path = ""
        self.private_key = ""
        self.host_key_line = ""

    def start(self) -> Self:
        """Start serving (idempotent)."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and remove everything the server created."""
        raise NotImplementedError

    def drop_connections(self) -> None:
        """Kill every live client session (the listener keeps running)."""
        raise NotImplementedError


    def __repr__(self) -> str:
        """No secrets in the representation."""
        return f"<{type(self).__name__} {self.kind} {self.host}:{self.port} user={self.username}>"


def generate_ed25519_key() -> tuple[str, str]:
    """A new Ed25519 key: (OpenSSH private key text, ``ssh-ed25519 AAAA...`` public key)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public
