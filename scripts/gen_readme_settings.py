"""Keep each plugin README's settings table in step with its `--about --format=markdown`.

Usage: `python scripts/gen_readme_settings.py` rewrites `tap-cordial-activity/README.md` and
`target-lytics/README.md` between the markers `<!-- BEGIN GENERATED: <plugin> ... -->` and
`<!-- END GENERATED: <plugin> -->`; `--check` only compares and exits 1 when one is stale
(tests/test_readme.py runs the same).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("tap-cordial-activity", "target-lytics")


def readme_of(plugin: str) -> Path:
    """The plugin's own README (also its page on the package index), which holds its table."""
    return ROOT / plugin / "README.md"


def _executable(plugin: str) -> str:
    """Find the plugin's console script, preferring the one beside the running Python (.venv)."""
    beside = Path(sys.executable).parent / plugin
    if beside.exists():
        return str(beside)
    found = shutil.which(plugin)
    if found is None:
        raise RuntimeError(f"{plugin} is not installed: run 'source scripts/bootstrap.sh' first")
    return found


def about(plugin: str, about_format: str) -> str:
    """Return what `<plugin> --about --format=<about_format>` prints."""
    result = subprocess.run(
        [_executable(plugin), "--about", f"--format={about_format}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{plugin} --about failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def secret_settings(about_json: str) -> list[str]:
    """Names of the settings a plugin marks secret (the markdown table does not show it)."""
    properties = json.loads(about_json)["settings"]["properties"]
    return [name for name, schema in properties.items() if schema.get("secret")]


def _section(markdown: str, heading: str) -> list[str]:
    """Lines under a `## heading` of the --about output, up to the next heading."""
    lines = markdown.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"## {heading}")
    except StopIteration:
        raise RuntimeError(f"--about output has no '## {heading}' section") from None
    body: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        body.append(line)
    return body


def settings_block(plugin: str, markdown: str, secrets: list[str]) -> str:
    """The generated text for one plugin: capabilities, secrets and the settings table."""
    capabilities = [
        line.strip()[2:] for line in _section(markdown, "Capabilities") if line.startswith("- ")
    ]
    # The table only: the --about text after it points at `--about`, which the README says itself.
    table = [line for line in _section(markdown, "Settings") if line.startswith("|")]
    if not table:
        raise RuntimeError(f"{plugin} --about printed no settings table")
    secret_names = ", ".join(f"`{name}`" for name in secrets)
    return "\n".join(
        [
            f"Capabilities: {', '.join(capabilities)}.",
            "",
            f"Secret (redacted by Meltano, kept in `.env`): {secret_names}.",
            "",
            *table,
        ]
    )


def _markers(plugin: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN GENERATED: {plugin} --about --format=markdown -->",
        f"<!-- END GENERATED: {plugin} -->",
    )


def render(readme: str, plugin: str, block: str) -> str:
    """Return the README text with the plugin's block replaced between its markers."""
    begin, end = _markers(plugin)
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    match = pattern.search(readme)
    if match is None:
        raise RuntimeError(f"{plugin}/README.md lacks the markers: {begin} ... {end}")
    return f"{readme[: match.start()]}{begin}\n{block}\n{end}{readme[match.end() :]}"


def expected_readmes() -> dict[Path, tuple[str, str]]:
    """Per plugin README: (its current text, its text with a freshly generated table)."""
    result: dict[Path, tuple[str, str]] = {}
    for plugin in PLUGINS:
        path = readme_of(plugin)
        current = path.read_text(encoding="utf-8")
        block = settings_block(
            plugin, about(plugin, "markdown"), secret_settings(about(plugin, "json"))
        )
        result[path] = (current, render(current, plugin, block))
    return result


def main(argv: list[str] | None = None) -> int:
    """Rewrite the plugin READMEs, or with --check report whether one is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a README is stale")
    args = parser.parse_args(argv)
    stale = 0
    for path, (current, wanted) in expected_readmes().items():
        name = str(path.relative_to(ROOT))
        if current == wanted:
            print(f"{name}: settings table up to date")
            continue
        stale += 1
        if args.check:
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    wanted.splitlines(keepends=True),
                    name,
                    f"{name} (generated)",
                )
            )
            print(f"{name} is stale: run 'python scripts/gen_readme_settings.py'", file=sys.stderr)
        else:
            path.write_text(wanted, encoding="utf-8")
            print(f"{name}: settings table regenerated")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
