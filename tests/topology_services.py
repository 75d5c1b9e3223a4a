"""Real servers for the production-topology tests: PostgreSQL (Debian's package) and moto's S3
(:class:`sandbox.s3.MotoS3Server`, also the S3 export destination's server).

Both listen on 127.0.0.1 on a free port and are context managers. A missing binary is a
RuntimeError that says what to install: these tests never skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Self

from sandbox.s3 import MotoS3Server
from sandbox.service import LocalService
from sandbox.sftp import free_port

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
# Root may not run PostgreSQL: as root, the server runs as this account (created by the package).
PG_ACCOUNT = "postgres"


def _pg_bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin folder (or initdb's folder on PATH)."""
    found = sorted(glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError(
        "PostgreSQL server not found (no initdb under /usr/lib/postgresql/*/bin or on PATH): "
        "run 'apt-get install postgresql'"
    )


class PostgresServer(LocalService):
    """A throwaway PostgreSQL cluster: password login for `user`, one database per caller."""

    host = "127.0.0.1"
    user = "meltano"

    def __init__(self) -> None:
        """Pick the binaries, a port and a password; `start()` creates the cluster."""
        self.bin_dir = _pg_bin_dir()
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.base = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", PG_ACCOUNT, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0:
            log = self.log.read_text("utf-8", "replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}{log}")

    def start(self) -> Self:
        """initdb (scram-sha-256 logins), then pg_ctl start and wait until it accepts."""
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(PG_ACCOUNT)
            except KeyError:
                raise RuntimeError(
                    f"no '{PG_ACCOUNT}' account to run PostgreSQL as: "
                    "run 'apt-get install postgresql'"
                ) from None
            os.chown(self.base, account.pw_uid, account.pw_gid)
        password_file = self.base / "password"
        password_file.write_text(self.password + "\n", encoding="utf-8")
        password_file.chmod(0o644)  # read by initdb as the server account; removed right after
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={password_file}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        finally:
            password_file.unlink()
        options = (
            f"-c listen_addresses={self.host} -p {self.port} "
            f"-c unix_socket_directories={self.data} -c fsync=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, "start")
        return self

    def stop(self) -> None:
        """Stop the server at once and delete the cluster."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


    def connect(self, dbname: str = "postgres") -> Any:
        """A psycopg connection (autocommit) as `user`."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            autocommit=True,
        )

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        name = "meltano_" + secrets.token_hex(4)
        with self.connect() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return name

    def meltano_uri(self, dbname: str) -> str:
        """MELTANO_DATABASE_URI for `dbname`: no password in it (libpq reads PGPASSWORD)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"


__all__ = ["MotoS3Server", "PostgresServer"]
