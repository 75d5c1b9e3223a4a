"""SFTP servers: real OpenSSH sshd (both auth methods, host key, drops, cleanup), fallback."""

from __future__ import annotations

import base64
import io
import os
import pwd
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from sandbox import sftp as sftp_module
from sandbox.sftp import OpenSshSftpServer, SftpServer, remove_stale_users, start_sftp_server
from sandbox.sftp_fallback import ParamikoSftpServer


def host_key(server: SftpServer) -> paramiko.PKey:
    keytype, b64 = server.host_key_line.split()[1:3]
    assert keytype == "ssh-ed25519"
    return paramiko.Ed25519Key(data=base64.b64decode(b64))


def connect(server: SftpServer, **auth: object) -> paramiko.SSHClient:
    """Log in with strict host key checking against ``host_key_line``."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(f"[{server.host}]:{server.port}", "ssh-ed25519", host_key(server))
    client.connect(
        server.host,
        server.port,
        username=server.username,
        allow_agent=False,
        look_for_keys=False,
        timeout=10,
        **auth,  # type: ignore[arg-type]
    )
    return client


def client_key(server: SftpServer) -> paramiko.PKey:
    return paramiko.Ed25519Key.from_private_key(io.StringIO(server.private_key))


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def own_server() -> Iterator[OpenSshSftpServer]:
    """A private sshd for tests that kill sessions or stop the server."""
    with OpenSshSftpServer() as server:
        yield server


def test_session_server_is_openssh(sftp_server: SftpServer) -> None:
    assert sftp_server.kind == "openssh"
    assert sftp_server.host == "127.0.0.1"
    assert sftp_server.sftp_path == str(sftp_server.root)
    assert Path(sftp_server.sftp_path).is_absolute()
    assert sftp_server.private_key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


@pytest.mark.parametrize("method", ["password", "key"])
def test_login_and_read_with_each_auth_method(sftp_server: SftpServer, method: str) -> None:
    payload = "é🎉\n".encode() * 50_000
    (sftp_server.root / f"file-{method}.json").write_bytes(payload)
    auth: dict[str, object] = (
        {"password": sftp_server.password}
        if method == "password"
        else {"pkey": client_key(sftp_server)}
    )
    client = connect(sftp_server, **auth)
    try:
        sftp = client.open_sftp()
        assert f"file-{method}.json" in sftp.listdir(sftp_server.sftp_path)
        with sftp.open(f"{sftp_server.sftp_path}/file-{method}.json", "rb") as handle:
            handle.prefetch()
            assert handle.read() == payload
    finally:
        client.close()


def test_wrong_password_and_unknown_key_are_refused(sftp_server: SftpServer) -> None:
    with pytest.raises(paramiko.AuthenticationException):
        connect(sftp_server, password="not-" + sftp_server.password)
    other = paramiko.Ed25519Key.from_private_key(io.StringIO(sftp_module.generate_ed25519_key()[0]))
    with pytest.raises(paramiko.AuthenticationException):
        connect(sftp_server, pkey=other)


def test_host_key_line_matches_ssh_keyscan(sftp_server: SftpServer) -> None:
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(sftp_server.port), sftp_server.host],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split("\n")
    lines = [line.strip() for line in scanned if line and not line.startswith("#")]
    assert lines == [sftp_server.host_key_line]


def test_a_different_host_key_is_detected(sftp_server: SftpServer) -> None:
    impostor = paramiko.Ed25519Key.from_private_key(
        io.StringIO(sftp_module.generate_ed25519_key()[0])
    )
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.get_host_keys().add(f"[{sftp_server.host}]:{sftp_server.port}", "ssh-ed25519", impostor)
    with pytest.raises(paramiko.BadHostKeyException):
        client.connect(
            sftp_server.host,
            sftp_server.port,
            username=sftp_server.username,
            password=sftp_server.password,
            allow_agent=False,
            look_for_keys=False,
        )
    client.close()


def test_drop_connections_kills_live_sessions(own_server: OpenSshSftpServer) -> None:
    client = connect(own_server, password=own_server.password)
    sftp = client.open_sftp()
    assert sftp.listdir(own_server.sftp_path) == []
    own_server.drop_connections()
    with pytest.raises((OSError, EOFError, paramiko.SSHException)):
        sftp.listdir(own_server.sftp_path)
    client.close()
    # The server itself keeps accepting logins.
    again = connect(own_server, pkey=client_key(own_server))
    assert again.open_sftp().listdir(own_server.sftp_path) == []
    again.close()


def test_stop_removes_process_user_and_folder() -> None:
    server = OpenSshSftpServer().start()
    base, user = server.root.parent, server.username
    assert user_exists(user)
    client = connect(server, password=server.password)
    client.open_sftp()
    assert server._proc is not None
    pid = server._proc.pid
    server.stop()
    client.close()
    assert not user_exists(user)
    assert not base.exists()
    assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes()
    server.stop()  # idempotent


def test_concurrent_servers_keep_their_own_users_and_passwords() -> None:
    servers: list[OpenSshSftpServer] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            servers.append(OpenSshSftpServer().start())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len({s.username for s in servers}) == 4
        assert len({s.password for s in servers}) == 4
        assert len({s.port for s in servers}) == 4
        for server in servers:  # each password still works after the others were set
            connect(server, password=server.password).close()
    finally:
        for server in servers:
            server.stop()


def test_stale_users_of_dead_processes_are_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"sbx-{dead.pid}-abcdef"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-N", name], check=True
    )
    assert name in remove_stale_users()
    assert not user_exists(name)


def test_missing_sshd_is_an_error_not_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sftp_module, "find_sshd", lambda: None)
    with pytest.raises(RuntimeError, match="apt-get install openssh-server"):
        start_sftp_server()
    monkeypatch.setenv("SANDBOX_REQUIRE_OPENSSH", "1")
    with pytest.raises(RuntimeError, match="openssh-server"):
        start_sftp_server(allow_fallback=True)


def test_non_root_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RuntimeError, match="root"):
        OpenSshSftpServer().start()


def test_fallback_is_used_only_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sftp_module, "find_sshd", lambda: None)
    monkeypatch.delenv("SANDBOX_REQUIRE_OPENSSH", raising=False)
    server = start_sftp_server(allow_fallback=True)
    try:
        assert isinstance(server, ParamikoSftpServer)
        assert server.kind == "paramiko"
    finally:
        server.stop()


def test_untraversable_tmp_dir_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(ValueError, match="not traversable"):
        OpenSshSftpServer(tmp_dir=private).start()
    assert list(private.iterdir()) == []


@pytest.mark.parametrize("method", ["password", "key"])
def test_paramiko_fallback_serves_the_folder(method: str) -> None:
    with ParamikoSftpServer() as server:
        (server.root / "a.json").write_bytes(b"x" * 100_000)
        auth: dict[str, object] = (
            {"password": server.password} if method == "password" else {"pkey": client_key(server)}
        )
        client = connect(server, **auth)
        sftp = client.open_sftp()
        assert sftp.listdir(server.sftp_path) == ["a.json"]
        with sftp.open(f"{server.sftp_path}/a.json", "rb") as handle:
            handle.prefetch()
            assert handle.read() == b"x" * 100_000
        assert sftp.stat(f"{server.sftp_path}/a.json").st_size == 100_000
        with pytest.raises(PermissionError):
            sftp.listdir("/etc")
        with pytest.raises(paramiko.AuthenticationException):
            connect(server, password="wrong")
        server.drop_connections()
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.listdir(server.sftp_path)
        client.close()
    assert not server.root.exists()


def test_paramiko_fallback_is_not_blocked_by_a_silent_client() -> None:
    with ParamikoSftpServer() as server:
        silent = socket.create_connection((server.host, server.port))
        try:
            client = connect(server, password=server.password)
            assert client.open_sftp().listdir(server.sftp_path) == []
            client.close()
        finally:
            silent.close()
