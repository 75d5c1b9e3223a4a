"""A throwaway copy of the repository's Meltano project for ``meltano run`` measurements.

The copy holds the repository's ``meltano.yml`` (read, never changed in place), links to the two
plugin folders (so ``pip_url: -e ./tap-cordial-activity`` resolves), and two extra custom plugins
for the stock baselines. These have no ``pip_url``: Meltano runs their ``executable``, a small
wrapper that starts them from the shared virtualenv. ``meltano install`` runs only when the project
definition or a plugin's ``pyproject.toml`` changed since the last install in that folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TAP = "tap-cordial-activity"
TARGET = "target-lytics"
STOCK_TAP = "stock-tap-cordial"
STOCK_TARGET = "stock-target-lytics"

_STOCK_TAP_SETTINGS = [
    ("api_key", "password"),
    ("api_url", "string"),
    ("start_date", "date_iso8601"),
    ("end_date", "date_iso8601"),
    ("sftp_host", "string"),
    ("sftp_port", "integer"),
    ("sftp_username", "string"),
    ("sftp_password", "password"),
    ("sftp_path", "string"),
    ("sftp_host_key", "string"),
    ("poll_interval_seconds", "decimal"),
    ("actions", "array"),
]
_STOCK_TARGET_SETTINGS = [("api_token", "password"), ("api_url", "string")]


def _settings(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"name": name, "kind": kind, **({"sensitive": True} if kind == "password" else {})}
        for name, kind in pairs
    ]


class MeltanoProject:
    """The benchmark's Meltano project folder ``work_dir``, built from the repository ``root``."""

    def __init__(self, root: Path, work_dir: Path) -> None:
        self.root = root
        self.dir = work_dir
        self.meltano = str(Path(sys.executable).with_name("meltano"))

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        """The environment for a meltano command: ours plus ``extra`` (plugin settings)."""
        env = {
            key: value
            for key, value in os.environ.items()
            # Settings of the outer shell must not leak into the measured configuration.
            if not key.startswith(("TAP_CORDIAL_ACTIVITY_", "TARGET_LYTICS_", "MELTANO_"))
        }
        env.update(
            {
                "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                "MELTANO_CLI_LOG_LEVEL": "warning",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        env.update(extra)
        return env

    def prepare(self, log: Path) -> None:
        """Write the project copy and install the two plugins when needed."""
        self.dir.mkdir(parents=True, exist_ok=True)
        source = yaml.safe_load((self.root / "meltano.yml").read_text())
        for folder in (TAP, TARGET):
            link = self.dir / folder
            if not link.is_symlink():
                if link.exists():
                    shutil.rmtree(link)
                link.symlink_to(self.root / folder, target_is_directory=True)
        self._write_wrappers()
        plugins = source.setdefault("plugins", {})
        plugins.setdefault("extractors", []).append(
            {
                "name": STOCK_TAP,
                "namespace": "stock_tap_cordial",
                "executable": f"bin/{STOCK_TAP}",
                "capabilities": ["catalog", "discover", "state", "about"],
                "settings": _settings(_STOCK_TAP_SETTINGS),
                # Set here, not from the environment (see run._meltano_tap_config).
                "config": {"poll_interval_seconds": 0.1},
            }
        )
        plugins.setdefault("loaders", []).append(
            {
                "name": STOCK_TARGET,
                "namespace": "stock_target_lytics",
                "executable": f"bin/{STOCK_TARGET}",
                "capabilities": ["about"],
                "settings": _settings(_STOCK_TARGET_SETTINGS),
            }
        )
        text = yaml.safe_dump(source, sort_keys=False)
        (self.dir / "meltano.yml").write_text(text)
        stamp_file = self.dir / ".bench-installed"
        stamp = hashlib.sha256(
            b"".join(
                p.read_bytes()
                for p in (
                    self.root / "meltano.yml",
                    self.root / TAP / "pyproject.toml",
                    self.root / TARGET / "pyproject.toml",
                )
            )
        ).hexdigest()
        if stamp_file.exists() and stamp_file.read_text() == stamp:
            return
        with open(log, "ab") as out:
            subprocess.run(
                [self.meltano, "install", "--clean", TAP, TARGET],
                cwd=self.dir,
                env=self.env({}),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        stamp_file.write_text(stamp)

    def _write_wrappers(self) -> None:
        """``bin/stock-*``: start the stock plugins from the shared virtualenv."""
        bin_dir = self.dir / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name, module in (
            (STOCK_TAP, "benchmarks.stock_tap"),
            (STOCK_TARGET, "benchmarks.stock_target"),
        ):
            wrapper = bin_dir / name
            wrapper.write_text(
                "#!/bin/sh\n"
                f'PYTHONPATH="{self.root}${{PYTHONPATH:+:$PYTHONPATH}}" '
                f'exec "{sys.executable}" -m {module} "$@"\n'
            )
            wrapper.chmod(0o755)

    def decimal_settings(self, plugin: str) -> set[str]:
        """Names of the plugin's ``kind: decimal`` settings in the project copy."""
        definition = yaml.safe_load((self.dir / "meltano.yml").read_text())
        for plugins in definition.get("plugins", {}).values():
            for entry in plugins:
                if entry.get("name") == plugin:
                    return {
                        setting["name"]
                        for setting in entry.get("settings", [])
                        if setting.get("kind") == "decimal"
                    }
        return set()

    def run_command(self, tap: str, target: str) -> list[str]:
        """``meltano run`` of one pair, ignoring state left by an earlier measurement.

        The sandbox environment: the stand-ins answer at once, so production's 15 s polls and
        15-minute settling would measure waiting, not the plugins.
        """
        return [self.meltano, "--environment=sandbox", "run", "--full-refresh", tap, target]
