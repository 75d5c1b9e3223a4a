"""The README's commands run as written: "Run it by hand" and the production checklist.

Each fenced block of those two sections carries a marker on the line before it:
`<!-- docs-test: run -->` (this test runs it verbatim with bash) or `<!-- docs-test: not run:
<why> -->` (it needs real accounts, your values or a network download). A block without a marker
fails the test, so a new command is either run here or says why it cannot be.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from test_meltano import BIN, _base_env, _setting_env, install_project_copy

pytestmark = pytest.mark.meltano

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARKED_BLOCK = re.compile(
    r"^(?P<indent>[ ]*)<!-- docs-test: (?P<verdict>run|not run: [^>]+) -->\n"
    r"(?P=indent)```bash\n(?P<body>.*?)^(?P=indent)```$",
    re.MULTILINE | re.DOTALL,
)


def _section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}")
    following = text.find("\n## ", start + 1)
    return text[start : following if following >= 0 else len(text)]


def blocks_to_run(heading: str) -> list[str]:
    """The section's `run` blocks, dedented; fails if a fenced block has no marker."""
    section = _section(heading)
    fences = len(re.findall(r"^[ ]*```bash$", section, re.MULTILINE))
    marked = list(MARKED_BLOCK.finditer(section))
    assert len(marked) == fences, (
        f"README {heading}: {fences - len(marked)} fenced block(s) lack a "
        "'<!-- docs-test: run -->' or '<!-- docs-test: not run: why -->' marker"
    )
    return [textwrap.dedent(m.group("body")) for m in marked if m.group("verdict") == "run"]


def _bash(script: str, cwd: Path, env: dict[str, str], timeout: int) -> str:
    """Run a script with `bash -e` in its own process group; return its output, fail on error."""
    process = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        output = ""
    finally:
        # Whatever the block left running (the sandbox, if it failed before its `kill`).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        if process.returncode is None:
            output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, (
        f"the README block failed ({process.returncode}):\n{output[-8000:]}"
    )
    return output


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh copy of the project with its plugins installed and the test's .venv as `.venv`."""
    (tmp_path / "project").mkdir()
    copy = install_project_copy(tmp_path / "project")
    (copy / ".venv").symlink_to(BIN.parent)
    return copy


def _lytics_totals(output: str) -> list[int]:
    return [
        int(n) for n in re.findall(r"^Lytics stream cordial_activity: (\d+) events", output, re.M)
    ]


def test_run_it_by_hand_runs_as_written(project: Path):
    (block,) = blocks_to_run("## Run it by hand")
    env = _base_env()
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != str(BIN))
    output = _bash(block, project, env, timeout=600)
    # Both runs delivered: the first most of the 2,000 events, the second only new ones.
    first, second = _lytics_totals(output)
    assert 0 < first <= 2000
    assert 0 < second - first <= 100, (first, second)
    # The schema is published, so the stand-in built profiles from the events.
    assert "no schema is published" not in output
    assert re.search(r"^user profiles \(.*\): [1-9]\d* in all", output, re.M), output[-3000:]
    assert '"replication_key_value"' in output  # `state get` showed the bookmark
    assert not (project / ".sandbox" / "env.sh").exists()  # `kill` stopped the sandbox


def test_production_checklist_runs_as_written_against_the_sandbox(project: Path, sandbox):
    blocks = blocks_to_run("## Going to production")
    assert len(blocks) >= 4, "the checklist lost its runnable steps"
    env = _base_env()
    # The sandbox's addresses and throwaway credentials, as the checklist's step 2 sets them;
    # the host key is left out: step 3 pins it.
    env.update(_setting_env("TAP_CORDIAL_ACTIVITY", sandbox.tap_config(sftp_host_key=None)))
    env.update(_setting_env("TARGET_LYTICS", sandbox.target_config()))
    env["MELTANO_DATABASE_URI"] = f"sqlite:///{project / 'meltano.db'}"
    output = _bash("\n".join(blocks), project, env, timeout=600)
    secrets = sandbox.secrets()
    assert not [s for s in secrets if s in output], "a secret was printed"
    # Step 3 pinned the server's key in meltano.yml (the tap refuses an unknown key).
    meltano_yml = yaml.safe_load((project / "meltano.yml").read_text(encoding="utf-8"))
    (production,) = [e for e in meltano_yml["environments"] if e["name"] == "production"]
    (tap,) = production["config"]["plugins"]["extractors"]
    assert tap["config"]["sftp_host_key"].startswith(f"[{sandbox.sftp.host}]:{sandbox.sftp.port} ")
    # The first run delivered the sandbox's events into Lytics.
    assert sandbox.lytics.events["cordial_activity"], output[-4000:]
