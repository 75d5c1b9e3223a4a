"""Every module, class, function, file, test and setting the docs name in backticks exists.

A rename in the code (a class moved to another module, a setting renamed, a test split) leaves the
docs naming something that is not there; this test finds it. It reads the inline code spans of
every page (fenced blocks apart: `test_readme_commands.py` runs those) and checks each span that
has the shape of a name:

- `test_x.py::test_name[...]`, `tests/test_x.py`, `test_name`: the file and the function exist;
- a path (`target_lytics/reader.py`, `orchestrate/dagster/`): it exists (plugin paths from the
  plugin's folder);
- `module.Name` (a module of our packages by its file name): `Name` is defined in that module
  itself (a re-export does not count: the docs should name where it lives);
  `package.module.Name`: importable;
- `ClassName` / `ClassName.member`: a class of ours with that member, or a known outside name;
- `TAP_CORDIAL_ACTIVITY_X`, `TARGET_LYTICS_X`, `_X` (after one of those), `setting: value`:
  a setting of that plugin, as its `--about` lists it;
- any other `snake_case` name: a setting, or a name the code, `meltano.yml` or `hub/` uses.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import json
import re
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = (
    "README.md",
    "docs/settings.md",
    "docs/operations.md",
    "docs/reliability.md",
    "docs/troubleshooting.md",
    "docs/design.md",
    "benchmarks/README.md",
    "tap-cordial-activity/README.md",
    "target-lytics/README.md",
)
CODE = (
    "tap-cordial-activity/tap_cordial_activity",
    "target-lytics/target_lytics",
    "sandbox",
    "benchmarks",
    "orchestrate",
    "tests",
    "scripts",
)
CONFIG_FILES = (
    "meltano.yml",
    "hub/extractors/tap-cordial-activity.yml",
    "hub/loaders/target-lytics.yml",
    "tap-cordial-activity/catalog.json",
    "orchestrate/dagster/dagster.yaml",
)
PACKAGES = ("tap_cordial_activity", "target_lytics", "sandbox", "benchmarks")
# Python names from outside that the docs name, with the module that must still have them.
OUTSIDE_PYTHON = {
    "ThreadingHTTPServer": "http.server",
    "BatchSink": "singer_sdk.sinks",
    "BaseBatchFileEncoding": "singer_sdk.helpers._batch",
    "GenericSingerReader": "singer_sdk._singerlib.encoding",
}
# Names that are not Python: shapes of the vendors' published definitions (Lytics' VersionDiff,
# SchemaResponse and idconfig fields; Cordial's ExportEvents, JobMetadataJ and DestinationObject),
# S3's actions and sshd_config.
NOT_PYTHON = {
    "VersionDiff",
    "SchemaResponse",
    "ExportEvents",
    "JobMetadataJ",
    "DestinationObject",
    "PutObject",
    "ForceCommand",
    "compact_after_days",
    "many_to",
}
# Files the docs name that a run writes (git-ignored), not the checkout.
WRITTEN_BY_A_RUN = {"benchmarks/results/latest.md", "benchmarks/results/backfill.md"}
FILE_SUFFIXES = {"json", "md", "yml", "yaml", "txt", "sh", "toml", "log", "db", "gz", "csv", "py"}


class Code:
    """What our Python files define: per module file name, its top-level names and classes."""

    def __init__(self) -> None:
        self.modules: dict[str, set[str]] = defaultdict(set)
        self.members: dict[str, set[str]] = defaultdict(set)
        self.tests: dict[str, set[str]] = defaultdict(set)
        self.words: set[str] = set()
        for folder in CODE:
            for path in (ROOT / folder).rglob("*.py"):
                if path == Path(__file__).resolve():
                    continue  # its own examples of wrong names
                source = path.read_text(encoding="utf-8")
                self.words |= set(re.findall(r"[A-Za-z_]\w*", source))
                self._index(path, ast.parse(source))
        for name in CONFIG_FILES:
            self.words |= set(re.findall(r"[A-Za-z_]\w*", (ROOT / name).read_text("utf-8")))

    def _index(self, path: Path, tree: ast.Module) -> None:
        defined = self.modules[path.stem]
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
                if path.stem.startswith("test_"):
                    self.tests[path.name].add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                defined |= {t.id for t in targets if isinstance(t, ast.Name)}
            if isinstance(node, ast.ClassDef):
                self.members[node.name] |= _class_members(node)


def _class_members(node: ast.ClassDef) -> set[str]:
    """Methods, class attributes and `self.x` attributes of a class."""
    members: set[str] = set()
    for item in ast.walk(node):
        if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
            members.add(item.name)
        elif isinstance(item, ast.Name) and isinstance(item.ctx, ast.Store):
            members.add(item.id)
        elif (
            isinstance(item, ast.Attribute)
            and isinstance(item.value, ast.Name)
            and item.value.id == "self"
        ):
            members.add(item.attr)
    return members


@cache
def code() -> Code:
    return Code()


@cache
def settings(plugin: str) -> frozenset[str]:
    """The plugin's settings as `--about` lists them, nested ones as `a.b`."""
    spec = importlib.util.spec_from_file_location(
        "gen_readme_settings", ROOT / "scripts" / "gen_readme_settings.py"
    )
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    properties = json.loads(generator.about(plugin, "json"))["settings"]["properties"]

    def names(props: dict[str, dict[str, object]], prefix: str) -> set[str]:
        found = set()
        for key, schema in props.items():
            found.add(prefix + key)
            nested = schema.get("properties")
            if isinstance(nested, dict):
                found |= names(nested, f"{prefix}{key}.")
        return found

    return frozenset(names(properties, ""))


def all_settings() -> frozenset[str]:
    return settings("tap-cordial-activity") | settings("target-lytics")


def problem(span: str) -> str | None:
    """Why a code span names something that does not exist, or None."""
    index = code()
    if span in NOT_PYTHON or span in WRITTEN_BY_A_RUN:
        return None
    if test := re.fullmatch(r"(?:tests/)?(test_\w+\*?\.py)(?:::(test_\w+)(?:\[[^\]]*\])?)?", span):
        files = sorted((ROOT / "tests").glob(test.group(1)))
        files += sorted((ROOT / "benchmarks" / "tests").glob(test.group(1)))
        if not files:
            return "no such test file"
        if test.group(2) and not any(test.group(2) in index.tests[f.name] for f in files):
            return f"no test function {test.group(2)} in {test.group(1)}"
        return None
    if re.fullmatch(r"test_\w+", span):
        has_it = any(span in names for names in index.tests.values())
        return None if has_it else "no such test function"
    if env := re.fullmatch(r"(TAP_CORDIAL_ACTIVITY|TARGET_LYTICS)_([A-Z0-9_]+)(=.*)?", span):
        plugin = "tap-cordial-activity" if env.group(1).startswith("TAP") else "target-lytics"
        known = env.group(2).lower() in settings(plugin)
        return None if known else f"{plugin} has no setting {env.group(2).lower()}"
    if fragment := re.fullmatch(r"_([A-Z][A-Z0-9_]+)", span):
        known = fragment.group(1).lower() in all_settings()
        return None if known else f"no setting {fragment.group(1).lower()}"
    if key := re.fullmatch(r"([a-z_][a-z0-9_.]*): \S.*", span):
        known = key.group(1) in all_settings() or key.group(1) in index.words
        return None if known else f"no setting {key.group(1)}"
    if " " in span:
        return None
    if "/" in span and re.fullmatch(r"[\w.*-]+(/[\w.*-]+)*/?", span):
        return _path_problem(span)
    if module_file := re.fullmatch(r"(\w+)\.py", span):
        return None if module_file.group(1) in index.modules else "no such file"
    if dotted := re.fullmatch(r"([A-Za-z_]\w*)((?:\.[A-Za-z_]\w*)+)(\(\))?", span):
        return _dotted_problem(dotted.group(1), dotted.group(2)[1:].split("."), span)
    if re.fullmatch(r"[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+", span):
        return _class_problem(span)
    if re.fullmatch(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+", span):
        known = span in all_settings() or span in index.words
        return None if known else "neither a setting nor a name in the code"
    return None


@cache
def tracked_top_level() -> frozenset[str]:
    """The checkout's top-level names (not what a run left there, such as `.sandbox/`)."""
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return frozenset(line.split("/")[0] for line in listed.splitlines())


def _path_problem(span: str) -> str | None:
    first = span.split("/")[0]
    if first not in tracked_top_level() and first not in PACKAGES:
        return None  # a path on the user's machine or a server (/v2/jobs, ~/.ssh/...)
    for base in (ROOT, ROOT / "tap-cordial-activity", ROOT / "target-lytics"):
        if list(base.glob(span.rstrip("/"))):
            return None
    return "no such path"


def _dotted_problem(head: str, rest: list[str], span: str) -> str | None:
    index = code()
    if rest[-1] in FILE_SUFFIXES or span.split("(")[0] in all_settings() or head in all_settings():
        return None
    if head in index.members:  # Class.member
        return None if rest[0] in index.members[head] else f"{head} has no {rest[0]}"
    if head in PACKAGES:  # package.module[.Name]: importable, re-exports included
        try:
            module = importlib.import_module(f"{head}.{rest[0]}")
        except ModuleNotFoundError:
            return f"no module {head}.{rest[0]}"
        has_it = len(rest) == 1 or hasattr(module, rest[1])
        return None if has_it else f"{head}.{rest[0]} has no {rest[1]}"
    if head in index.modules:  # module.Name: defined in that module itself
        if rest[0] not in index.modules[head]:
            return f"{rest[0]} is not defined in {head}.py"
        if len(rest) > 1 and rest[0] in index.members and rest[1] not in index.members[rest[0]]:
            return f"{rest[0]} has no {rest[1]}"
    return None


def _class_problem(span: str) -> str | None:
    if span in code().members or any(span in names for names in code().modules.values()):
        return None
    if hasattr(builtins, span):
        return None
    if span in OUTSIDE_PYTHON:
        module = importlib.import_module(OUTSIDE_PYTHON[span])
        return None if hasattr(module, span) else f"{OUTSIDE_PYTHON[span]} has no {span}"
    return "no such class in our code (or add it to OUTSIDE_PYTHON / NOT_PYTHON)"


def code_spans(markdown: str) -> list[str]:
    """The inline code spans of a page, fenced blocks left out."""
    prose = re.sub(r"^[ ]*```.*?^[ ]*```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return [m.group(2).strip() for m in re.finditer(r"(``?)(?!`)(.+?)\1", prose)]


def test_every_name_the_docs_give_exists():
    missing = [
        f"{page}: `{span}`: {why}"
        for page in PAGES
        for span in code_spans((ROOT / page).read_text(encoding="utf-8"))
        if (why := problem(span))
    ]
    assert not missing, "the docs name what the code no longer has:\n" + "\n".join(missing)


def test_the_check_finds_a_moved_class_a_renamed_setting_and_a_missing_test():
    assert problem("remote_file.RemoteFile") is None
    assert problem("sftp.RemoteFile") == "RemoteFile is not defined in sftp.py"  # a re-export
    assert problem("SingerLineReader") is None
    assert problem("SingerLineReaders") is not None
    assert problem("TAP_CORDIAL_ACTIVITY_SFTP_HOST") is None
    assert problem("TAP_CORDIAL_ACTIVITY_SFTP_HOSTNAME") is not None
    assert problem("count_mismatch: warn") is None
    assert problem("count_mismatches: warn") is not None
    assert problem("test_tap_sync.py::test_job_timeout") is None
    assert problem("test_tap_sync.py::test_job_timed_out") is not None
    assert problem("target_lytics/reader.py") is None
    assert problem("target_lytics/readers.py") == "no such path"
