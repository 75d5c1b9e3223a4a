"""The README stays in step with the plugins and keeps the two commands it promises."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _generator() -> ModuleType:
    """Import scripts/gen_readme_settings.py (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "gen_readme_settings", ROOT / "scripts" / "gen_readme_settings.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_settings_tables_match_the_plugins_about_output():
    current, wanted = _generator().expected_readme()
    assert current == wanted, (
        "README.md settings tables are stale: run 'python scripts/gen_readme_settings.py'"
    )


def test_settings_tables_name_every_setting_of_both_plugins():
    gen = _generator()
    text = README.read_text(encoding="utf-8")
    for plugin, must_have in {
        "tap-cordial-activity": ("api_key", "sftp_host_key", "export_window_hours"),
        "target-lytics": ("api_token", "streams", "max_request_bytes"),
    }.items():
        begin, end = gen._markers(plugin)
        block = text[text.index(begin) : text.index(end)]
        rows = {m.group(1) for m in re.finditer(r"^\| *([a-z_.]+) *\|", block, re.MULTILINE)}
        assert set(must_have) <= rows, f"{plugin}: {set(must_have) - rows} missing from README"


def test_readme_gives_exactly_the_two_commands_and_the_placeholders():
    text = README.read_text(encoding="utf-8")
    quick_start = text[text.index("## Try it") : text.index("## The Meltano project")]
    commands = re.findall(r"^bash (\S+)", quick_start, re.MULTILINE)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    for script in commands:
        assert (ROOT / script).is_file(), script
    for marker in ("<!-- PERFORMANCE -->", "<!-- RELIABILITY -->"):
        assert marker in text


# Distinctive parts of the messages that README's Troubleshooting explains: each must still be in
# the plugins' code (a reworded message would leave the README explaining something never shown).
TROUBLESHOOTING_PHRASES = {
    "tap-cordial-activity": (
        "No SFTP login for the tap",
        "No way for Cordial to write the export to SFTP",
        "is not a date (yyyy-mm-dd) or ISO 8601 date-time",
        "must be after `start_date`",
        "key's IP allow-list",
        "Gave up after",
        "Cordial API unreachable while",
        "failed: ",
        "did not finish within",
        "but no file beginning",
        "is unknown: the server presented",
        "DOES NOT MATCH",
        "the tap refuses to connect",
        "refused: check `sftp_username`",
        "cannot reach SFTP server",
        "refused to start the SFTP subsystem",
        "cannot list SFTP folder",
        "reconnects failed",
        "Bad export data in",
        "record without `_id`",
        "truncated gzip file",
        "the schema does not describe",
        "the private key is encrypted: set `sftp_private_key_passphrase`",
    ),
    "target-lytics": (
        "the token is invalid or missing: check api_token",
        "the token lacks permission: check the token's role",
        "Lytics rejected the data as invalid",
        "the request body is too large: lower max_request_bytes",
        "no such endpoint: check api_url",
        "Lytics may be",
        "Lytics rejected",
        "more than",
        "Lytics accepts at most",
        "Record Message Validation Error",
        "Lytics' success envelope",
        "missing or rejected",
        "holds a control character",
        "holds a user name or password",
        "its draft holds changes that are not",
    ),
}


def test_troubleshooting_messages_are_still_the_plugins_messages():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Troubleshooting") : text.index("## Development")]
    for plugin, phrases in TROUBLESHOOTING_PHRASES.items():
        package = ROOT / plugin / plugin.replace("-", "_")
        source = "\n".join(p.read_text(encoding="utf-8") for p in sorted(package.glob("*.py")))
        for phrase in phrases:
            assert phrase in source, f"{plugin} no longer says {phrase!r}: update the README"
            assert phrase in section, f"README Troubleshooting does not explain {phrase!r}"
