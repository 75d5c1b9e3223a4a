"""constraints-dev.txt, the development environment's lock, is what the venv holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints-dev.txt"


def _pins(lines: list[str]) -> dict[str, str]:
    """`name==version` lines by normalized name (comments and blanks skipped)."""
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_the_dev_venv_holds_the_locked_versions():
    locked = _pins(LOCK.read_text(encoding="utf-8").splitlines())
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    installed = _pins([line for line in freeze if "==" in line])
    problems = [
        f"{name}=={version} is installed, constraints-dev.txt pins {locked[name]}: "
        "source scripts/bootstrap.sh"
        for name, version in sorted(installed.items())
        if name in locked and locked[name] != version
    ]
    problems += [
        f"{name}=={version} is installed but not in constraints-dev.txt (a new dependency?): "
        "run scripts/lock.sh"
        for name, version in sorted(installed.items())
        if name not in locked
    ]
    problems += [
        f"constraints-dev.txt pins {name}=={version}, which is not installed: run scripts/lock.sh"
        for name, version in sorted(locked.items())
        if name not in installed
    ]
    assert not problems, "\n".join(problems)


def test_bootstrap_installs_with_the_lock_and_reinstalls_when_it_changes():
    script = (ROOT / "scripts" / "bootstrap.sh").read_text(encoding="utf-8")
    assert '-c "$root/constraints-dev.txt"' in script
    # The re-install stamp covers the lock, so a refreshed lock reaches every existing .venv.
    stamp = script[script.index("want=") : script.index("sha256sum")]
    assert '"$root/constraints-dev.txt"' in stamp
