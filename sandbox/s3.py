"""S3 for the sandbox: moto's S3 server, and a proxy that cuts one download mid-object.

:class:`MotoS3Server` is moto's server mode (an S3 API on 127.0.0.1, a separate process): the
Cordial stand-in writes S3 exports into it, the tap reads them, and Meltano's S3 state backend
uses it in the topology tests. :class:`CuttingProxy` sits between the tap and the server and,
when armed, resets one connection once it has passed a number of response bytes: a read cut
mid-object.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from sandbox.service import LocalService
from sandbox.sftp import free_port

__all__ = ["CuttingProxy", "MotoS3Server"]


class MotoS3Server(LocalService):
    """moto's server mode: an S3 API on 127.0.0.1, as a separate process."""

    host = "127.0.0.1"
    region = "us-east-1"
    # moto accepts any key; these only have to be present for boto3 to sign requests.
    access_key_id = "testing-access-key"
    secret_access_key = "testing-secret-key"  # noqa: S105 - moto's, not a secret

    def __init__(self, *, authorize_after_requests: int | None = None) -> None:
        """Pick a port; `start()` starts the process.

        ``authorize_after_requests``: moto checks credentials and IAM policies from that many
        requests on (its ``INITIAL_NO_AUTH_ACTION_COUNT``; the first ones set up users and
        buckets). None: every request is allowed, whatever the keys.
        """
        self.port = free_port()
        self.authorize_after_requests = authorize_after_requests
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])

    @property
    def url(self) -> str:
        """The endpoint URL (state_backend.s3.endpoint_url)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Start `python -m moto.server` and wait until it answers."""
        try:
            import moto.server  # noqa: F401
        except ImportError:
            raise RuntimeError("moto is not installed: run scripts/bootstrap.sh") from None
        env = dict(os.environ)
        if self.authorize_after_requests is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.authorize_after_requests)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log.read_text('utf-8', 'replace')}")
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):  # noqa: S310
                    return self
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not answer within 60 s")

    def stop(self) -> None:
        """Terminate the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.unlink(missing_ok=True)


    def client(self, service: str = "s3") -> Any:
        """A boto3 client of ``service`` (S3; IAM to set up users) for this server."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def env(self) -> dict[str, str]:
        """The variables that point Meltano's S3 state backend at this server."""
        # Meltano 4.4 passes endpoint_url to boto3 only together with keys from its own
        # state_backend.s3.* settings (with boto3's default credential chain it drops it).
        return {
            "MELTANO_STATE_BACKEND_S3_ENDPOINT_URL": self.url,
            "MELTANO_STATE_BACKEND_S3_AWS_ACCESS_KEY_ID": self.access_key_id,
            "MELTANO_STATE_BACKEND_S3_AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (in :attr:`region`)."""
        self.client().create_bucket(Bucket=bucket)

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every key under ``prefix`` in ``bucket``, with its size."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            found.update((o["Key"], int(o["Size"])) for o in page.get("Contents", ()))
        return found

    def empty_bucket(self, bucket: str) -> None:
        """Delete every object of ``bucket``."""
        client = self.client()
        for key in self.keys(bucket):
            client.delete_object(Bucket=bucket, Key=key)


class CuttingProxy(LocalService):
    """A TCP proxy to ``upstream``; :meth:`cut_after` resets one connection mid-response.

    Once armed with ``cut_after(n)``, the connection carrying the n-th response byte from then on
    is reset (RST, as a dropped network path looks to the client), and the proxy disarms:
    the client's retry gets through.
    """

    host = "127.0.0.1"

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        """Listen on a free port; :meth:`start` accepts connections."""
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.cuts = 0
        self._armed: int | None = None
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        """The endpoint URL the tap gets (``s3_endpoint_url``)."""
        return f"http://{self.host}:{self.port}"

    def cut_after(self, response_bytes: int) -> None:
        """Reset the connection that carries the ``response_bytes``-th response byte from now."""
        with self._lock:
            self._armed = response_bytes

    def start(self) -> Self:
        """Accept connections in a background thread."""
        listener = socket.create_server((self.host, self.port))
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept, name="s3-proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop accepting (open connections end with their peers)."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, responses: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if responses and self._should_cut(len(data)):
                    # SO_LINGER 0: close() sends RST, so the client sees a reset mid-body.
                    for end in (sink, source):
                        end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        end.close()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.close()

    def _should_cut(self, more: int) -> bool:
        """Count response bytes since arming; True (and disarm) once they reach the mark."""
        with self._lock:
            if self._armed is None:
                return False
            self._armed -= more
            if self._armed > 0:
                return False
            self._armed = None
            self.cuts += 1
            return True

