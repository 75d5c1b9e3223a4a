"""SFTP servers for the sandbox: a real OpenSSH ``sshd``, or a paramiko fallback for the demo.

:class:`OpenSshSftpServer` runs ``sshd -D`` as root on a free 127.0.0.1 port with its own temporary
config, Ed25519 host key and authorized client key, serving a temporary folder. It logs in a
dedicated local user created for this server alone (``useradd``) with a random password, and removes
that user on stop. One user per server means concurrent test processes never change a password
another server relies on. Users left behind by a killed process are removed by the next start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from sandbox.sftp_base import SftpServer, generate_ed25519_key
from sandbox.sftp_fallback import ParamikoSftpServer

__all__ = [
    "OpenSshSftpServer", "SftpServer", "find_sshd", "free_port", "generate_ed25519_key",
    "remove_stale_users", "start_sftp_server",
]

#: Local user names are ``sbx-<owner pid>-<6 hex>``: unique per server, and the pid lets a later
#: start remove users whose owning process is gone.
_USER_PREFIX = "sbx-"
_USER_RE = re.compile(r"^sbx-(\d+)-[0-9a-f]{6}$")
_INSTALL_HINT = "install it with 'apt-get install openssh-server' (Debian/Ubuntu)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the caller must cope with races)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_sshd() -> str | None:
    """Path of the OpenSSH server binary, if installed."""
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _openssh_version(sshd: str) -> tuple[int, int]:
    """(major, minor) of the installed sshd; (0, 0) when it cannot be told."""
    result = subprocess.run([sshd, "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", result.stderr + result.stdout)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _run_account_tool(args: list[str], *, stdin: str | None = None, attempts: int = 40) -> None:
    """Run useradd/chpasswd/userdel, retrying while another process holds the passwd lock."""
    delay = 0.05
    for attempt in range(attempts):
        result = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
        if result.returncode == 0:
            return
        # shadow-utils exits 10 (useradd/userdel) or 1 (chpasswd) with "cannot lock" when busy.
        busy = "lock" in result.stderr.lower() or result.returncode == 10
        if not busy or attempt == attempts - 1:
            raise RuntimeError(
                f"{args[0]} failed (exit {result.returncode}): {result.stderr.strip()}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_users() -> list[str]:
    """Delete sandbox users whose owning process no longer exists; returns their names."""
    removed = []
    for entry in pwd.getpwall():
        match = _USER_RE.match(entry.pw_name)
        if match and not _pid_alive(int(match[1])):
            try:
                _run_account_tool(["userdel", "--force", entry.pw_name], attempts=5)
            except RuntimeError:
                continue  # another process may be removing it right now
            removed.append(entry.pw_name)
    return removed


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # Field 4 is the parent pid; the command name (field 2) may hold spaces, so split after ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    result: list[int] = []
    queue = [pid]
    while queue:
        kids = _children(queue.pop())
        result.extend(kids)
        queue.extend(kids)
    return result


def _kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _check_traversable(path: Path) -> None:
    """The dedicated user must reach the served folder: every ancestor needs o+x."""
    for parent in [path, *path.parents]:
        if not parent.stat().st_mode & 0o001:
            raise ValueError(
                f"{parent} is not traversable by other users (mode {parent.stat().st_mode:o}); "
                "the SFTP user could not reach the served folder: choose another tmp_dir"
            )


class OpenSshSftpServer(SftpServer):
    """A real OpenSSH ``sshd`` (needs root) serving a temporary folder on 127.0.0.1."""

    kind = "openssh"

    def __init__(self, *, tmp_dir: Path | None = None, start_timeout: float = 10.0) -> None:
        super().__init__()
        self._tmp_dir = tmp_dir
        self._start_timeout = start_timeout
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._user_created = False

    def start(self) -> Self:
        """Create the user, keys and config, then start ``sshd -D``."""
        if self._proc is not None:
            return self
        sshd = find_sshd()
        if sshd is None:
            raise RuntimeError(f"OpenSSH sshd is not installed: {_INSTALL_HINT}")
        if os.geteuid() != 0:
            raise RuntimeError(
                "the OpenSSH sandbox server must run as root (it starts sshd and creates a local "
                "user); run as root, or use the paramiko fallback (allow_fallback=True)"
            )
        try:
            self._prepare()
            self._launch(sshd)
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="sandbox-sftp-", dir=self._tmp_dir))
        self._base = base
        base.chmod(0o711)
        _check_traversable(base)
        etc = base / "etc"
        etc.mkdir(mode=0o700)
        self.root = base / "export"
        self.root.mkdir()
        self.sftp_path = str(self.root)

        host_private, host_public = generate_ed25519_key()
        host_key = etc / "ssh_host_ed25519_key"
        host_key.write_text(host_private)
        host_key.chmod(0o600)
        self._host_public = host_public
        self.private_key, client_public = generate_ed25519_key()
        # sshd reads authorized keys as the logging-in user, so they live outside the 0700 etc/.
        auth = base / "auth"
        auth.mkdir(mode=0o755)
        (auth / "authorized_keys").write_text(client_public + "\n")
        (auth / "authorized_keys").chmod(0o644)

        remove_stale_users()
        self.username = f"{_USER_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.password = secrets.token_urlsafe(18)
        _run_account_tool(
            [
                "useradd",
                "--no-create-home",
                "--home-dir",
                self.sftp_path,
                "--shell",
                "/usr/sbin/nologin",
                "--no-user-group",
                "--comment",
                f"cordial-lytics sandbox sftp (pid {os.getpid()})",
                self.username,
            ]
        )
        self._user_created = True
        # chpasswd reads the password on stdin: it never shows up in a process list.
        _run_account_tool(["chpasswd"], stdin=f"{self.username}:{self.password}\n")
        os.chown(self.root, pwd.getpwnam(self.username).pw_uid, -1)
        self.root.chmod(0o755)
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    def _config(self, sshd: str) -> str:
        assert self._base is not None
        etc = self._base / "etc"
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            "AddressFamily inet",
            f"HostKey {etc / 'ssh_host_ed25519_key'}",
            f"PidFile {etc / 'sshd.pid'}",
            f"AuthorizedKeysFile {self._base / 'auth' / 'authorized_keys'}",
            f"AllowUsers {self.username}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication yes",
            "KbdInteractiveAuthentication no",
            "PermitEmptyPasswords no",
            "UseDNS no",
            "Subsystem sftp internal-sftp",
            "ForceCommand internal-sftp",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "PermitTTY no",
            "PrintMotd no",
            # Many parallel test sessions connect at once; don't drop them as a flood.
            "MaxStartups 200",
            "MaxSessions 100",
            "LoginGraceTime 30",
            "LogLevel VERBOSE",
        ]
        if _openssh_version(sshd) >= (9, 8):
            # Failed logins in tests must not get 127.0.0.1 penalized (OpenSSH 9.8+).
            lines.append("PerSourcePenalties no")
        return "\n".join(lines) + "\n"

    def _launch(self, sshd: str) -> None:
        assert self._base is not None
        etc = self._base / "etc"
        config = etc / "sshd_config"
        log = etc / "sshd.log"
        last_error = ""
        for _ in range(8):  # another process may grab the free port before sshd binds it
            self.port = free_port()
            config.write_text(self._config(sshd))
            log.write_text("")
            proc = subprocess.Popen(
                [sshd, "-D", "-f", str(config), "-E", str(log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            ready = f"Server listening on 127.0.0.1 port {self.port}."
            deadline = time.monotonic() + self._start_timeout
            while time.monotonic() < deadline:
                if ready in log.read_text(errors="replace"):
                    self._proc = proc
                    self.host_key_line = f"[{self.host}]:{self.port} {self._host_public}"
                    return
                if proc.poll() is not None:
                    break
                time.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate()
            last_error = (log.read_text(errors="replace") + stderr.decode(errors="replace")).strip()
            if "Address already in use" not in last_error:
                break
        raise RuntimeError(f"sshd did not start: {last_error or 'no output'}")

    def drop_connections(self) -> None:
        """Kill every session process under the listening sshd."""
        if self._proc is None:
            return
        sessions = _descendants(self._proc.pid)
        _kill_all(sessions)
        _wait_gone(sessions)

    def stop(self) -> None:
        """Kill sshd and its sessions, delete the user and the temporary folder."""
        proc, self._proc = self._proc, None
        if proc is not None:
            sessions = _descendants(proc.pid)
            proc.terminate()
            _kill_all(sessions)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()
            _wait_gone(sessions)
        if self._user_created:
            self._user_created = False
            _run_account_tool(["userdel", "--force", self.username])
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None

    def log_text(self) -> str:
        """The sshd log so far (for debugging failed tests; holds no secrets)."""
        if self._base is None:
            return ""
        log = self._base / "etc" / "sshd.log"
        return log.read_text(errors="replace") if log.exists() else ""


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie may never be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.01)


def start_sftp_server(*, allow_fallback: bool = False, tmp_dir: Path | None = None) -> SftpServer:
    """Start the OpenSSH server; with ``allow_fallback``, the paramiko one when that cannot run.

    ``SANDBOX_REQUIRE_OPENSSH=1`` in the environment (CI) forbids the fallback.
    """
    require = os.environ.get("SANDBOX_REQUIRE_OPENSSH", "") not in ("", "0")
    if allow_fallback and not require and (find_sshd() is None or os.geteuid() != 0):
        return ParamikoSftpServer(tmp_dir=tmp_dir).start()
    return OpenSshSftpServer(tmp_dir=tmp_dir).start()
