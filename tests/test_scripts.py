"""scripts/bootstrap.sh, sourced by hand as the README says."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The shell's option flags, then pipefail, nounset and errexit as `set -o` prints them.
SHOW_OPTIONS = 'echo "$-"; shopt -po pipefail nounset errexit'


def _bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )


def test_sourcing_bootstrap_leaves_the_shell_options_alone():
    result = _bash(
        f"{SHOW_OPTIONS}; source scripts/bootstrap.sh; echo status=$?; {SHOW_OPTIONS}; "
        "command -v meltano; false; echo still running"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    status = lines.index("status=0")
    assert lines[:status] == lines[status + 1 : 2 * status + 1]
    assert "set +o errexit" in lines[:status]
    assert lines[2 * status + 1] == str(ROOT / ".venv" / "bin" / "meltano")
    assert lines[-1] == "still running"


def test_a_failing_bootstrap_returns_its_status_to_the_shell(tmp_path):
    # A copy outside the project: no .venv there, and the Python to create it does not exist.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bootstrap.sh").write_text(
        (ROOT / "scripts" / "bootstrap.sh").read_text()
    )
    result = _bash(
        f"PYTHON={tmp_path / 'no-python'}; source {tmp_path / 'scripts' / 'bootstrap.sh'}; "
        "echo status=$?; echo still running"
    )
    assert result.stdout.splitlines()[-2:] == ["status=127", "still running"], result.stderr
    assert not (tmp_path / ".venv").exists()
