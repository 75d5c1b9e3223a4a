"""The docs stay in step with the plugins, and the README keeps the two commands it promises.

The README is the front door; the rest is one link away: docs/*.md, each plugin's README (with its
generated settings table) and benchmarks/README.md. The checks here cover all of those pages.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"
# Every page the README links to for what moved out of it (and the README itself).
PAGES = (
    README,
    ROOT / "docs" / "settings.md",
    ROOT / "docs" / "operations.md",
    ROOT / "docs" / "reliability.md",
    TROUBLESHOOTING,
    ROOT / "docs" / "design.md",
    ROOT / "benchmarks" / "README.md",
    ROOT / "tap-cordial-activity" / "README.md",
    ROOT / "target-lytics" / "README.md",
)


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
    for path, (current, wanted) in _generator().expected_readmes().items():
        assert current == wanted, (
            f"{path.relative_to(ROOT)} settings table is stale: "
            "run 'python scripts/gen_readme_settings.py'"
        )


def test_settings_tables_name_every_setting_of_both_plugins():
    gen = _generator()
    for plugin, must_have in {
        "tap-cordial-activity": ("api_key", "sftp_host_key", "export_window_hours"),
        "target-lytics": ("api_token", "streams", "max_request_bytes"),
    }.items():
        text = gen.readme_of(plugin).read_text(encoding="utf-8")
        begin, end = gen._markers(plugin)
        block = text[text.index(begin) : text.index(end)]
        rows = {m.group(1) for m in re.finditer(r"^\| *([a-z_.]+) *\|", block, re.MULTILINE)}
        assert set(must_have) <= rows, f"{plugin}: {set(must_have) - rows} missing from its README"


def _section(text: str, heading: str) -> str:
    """The text under a `## heading` (matched by its start), up to the next `## ` heading."""
    start = text.index(f"\n{heading}")
    following = text.find("\n## ", start + 1)
    return text[start : following if following >= 0 else len(text)]


def test_readme_gives_exactly_the_two_commands():
    quick_start = _section(README.read_text(encoding="utf-8"), "## Try it")
    commands = re.findall(r"^bash (\S+)", quick_start, re.MULTILINE)
    assert commands == ["scripts/demo.sh", "scripts/test.sh"]
    for script in commands:
        assert (ROOT / script).is_file(), script


def test_readme_is_a_front_door_with_every_moved_section_one_link_away():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300, "README.md is over 300 lines: move a section to a page"
    for heading in (
        "## Try it",
        "## Run it by hand",
        "## Use it in your own Meltano project",
        "## Going to production",
        "## Documentation",
    ):
        assert f"\n{heading}" in text, heading
    links = set(re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text))
    for page in PAGES[1:]:
        assert str(page.relative_to(ROOT)) in links, f"README.md does not link {page}"
    # The moved sections' placeholders, where other work adds rows and figures.
    assert "<!-- RELIABILITY -->" in (ROOT / "docs" / "reliability.md").read_text("utf-8")
    assert "<!-- PERFORMANCE -->" in (ROOT / "benchmarks" / "README.md").read_text("utf-8")


def test_links_between_the_pages_reach_a_file_and_a_heading():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            linked = (page.parent / target).resolve() if target else page
            assert linked.exists(), f"{page.relative_to(ROOT)} links {target}, which is not there"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked.read_text(encoding="utf-8")), (
                    f"{page.relative_to(ROOT)} links {target}#{anchor}: no such heading"
                )


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


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
    section = TROUBLESHOOTING.read_text(encoding="utf-8")
    for plugin, phrases in TROUBLESHOOTING_PHRASES.items():
        package = ROOT / plugin / plugin.replace("-", "_")
        source = "\n".join(p.read_text(encoding="utf-8") for p in sorted(package.glob("*.py")))
        for phrase in phrases:
            assert phrase in source, f"{plugin} no longer says {phrase!r}: update the docs"
            assert phrase in section, f"docs/troubleshooting.md does not explain {phrase!r}"
