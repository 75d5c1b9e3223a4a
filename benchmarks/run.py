"""The benchmark: tap-cordial-activity and target-lytics against stock singer-sdk plugins.

``python -m benchmarks.run [--events N] [--compare-small] [--repeat R]`` (or ``scripts/bench.sh``).
It generates N events, serves them through the sandbox (Cordial stand-in, OpenSSH sftp with gzip
JSON Lines, Lytics stand-in) and measures, for our plugins and the stock ones on the same data:

(a) the tap alone, from the export job's creation to the last RECORD read from its stdout;
(b) the target alone, from its start (stdin: the tap's saved output) to the last accepted upload;
(c) ``meltano run`` of the pair, from the command's start to its exit (ours twice: RECORD
    messages, and with the tap's ``batch_config``: BATCH files);
(slow-link, only when asked: ``--only slow-link``) our target on a slow link to Lytics, with its
defaults and with one upload at a time, against the local link (see benchmarks/slow_link.py).

Every measurement runs several times and the best is kept (the machine is shared). The table
goes to stdout and to benchmarks/results/latest.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from benchmarks import measure, profiling, slow_link
from benchmarks.meltano_project import STOCK_TAP, STOCK_TARGET, TAP, TARGET, MeltanoProject
from benchmarks.report import (
    OURS_BATCH,
    OURS_S3,
    STOCK_NO_PREFETCH,
    Result,
    machine_line,
    ratio_goal,
    render,
)
from benchmarks.services import Dataset, Sandbox
from sandbox.events import generate_events

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
#: Scratch space (saved tap output, configs, logs, the Meltano project copy), outside the repo
#: so that linters and test collection never walk into the project copy's plugin links.
WORK = Path(
    os.environ.get("BENCH_WORK_DIR") or Path(tempfile.gettempdir()) / "cordial-lytics-bench"
)
BIN = Path(sys.executable).parent

#: The generated events fill one 6-hour window (the tap's export_window_hours is 24: one job).
WINDOW = timedelta(hours=6)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """Measurements on one dataset."""

    def __init__(self, sandbox: Sandbox, args: argparse.Namespace, work: Path) -> None:
        self.sb = sandbox
        self.args = args
        self.work = work
        self.events = sandbox.dataset.count
        self.env = {"PYTHONPATH": str(ROOT), "PATH": f"{BIN}:/usr/bin:/bin"}
        self.tap_output = work / f"tap-output-{self.events}.jsonl"

    # -- commands ---------------------------------------------------------------------------
    def _tap_cmd(self, impl: str) -> list[str]:
        ours = impl in ("ours", OURS_S3)
        settings = self.sb.tap_config(stock=not ours, s3=impl == OURS_S3)
        if impl == STOCK_NO_PREFETCH:
            settings["sftp_prefetch"] = False
        config = self.sb.write_config(f"{impl}-tap", settings)
        if not ours:
            return [sys.executable, "-m", "benchmarks.stock_tap", "--config", str(config)]
        return [str(BIN / TAP), "--config", str(config)]

    def _target_cmd(self, impl: str, settings: dict[str, Any] | None = None) -> list[str]:
        config = self.sb.write_config(
            f"{impl}-target", {**self.sb.target_config(), **(settings or {})}
        )
        if impl == "stock":
            return [sys.executable, "-m", "benchmarks.stock_target", "--config", str(config)]
        return [str(BIN / TARGET), "--config", str(config)]

    def _best(self, name: str, impl: str, once: Callable[[int], Result]) -> Result:
        """Run a measurement ``--repeat`` (or ``--stock-repeat``) times; keep the fastest run, and
        the largest peak RSS of all runs."""
        runs: list[Result] = []
        ours = impl in ("ours", OURS_BATCH, OURS_S3)
        for attempt in range(self.args.repeat if ours else self.args.stock_repeat):
            result = once(attempt)
            _log(
                f"{name} #{attempt + 1}: {result.records:,} records in {result.seconds:.2f} s "
                f"({result.rate:,.0f}/s), peak RSS "
                + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in result.peak_rss.items())
            )
            runs.append(result)
        best = min(runs, key=lambda r: r.seconds)
        best.runs = [r.seconds for r in runs]
        for result in runs:
            for role, peak in result.peak_rss.items():
                best.peak_rss[role] = max(best.peak_rss.get(role, 0), peak)
        return best

    # -- (a) tap alone ----------------------------------------------------------------------
    def tap(self, impl: str) -> Result:
        """From the export job's creation to the last RECORD on the tap's stdout."""

        def once(attempt: int) -> Result:
            save = None
            if attempt == 0 and impl in ("ours", "stock"):
                save = self.tap_output if impl == "ours" else self.work / "stock-tap-output.jsonl"
            run = measure.run_measured(
                self._tap_cmd(impl),
                roles={"tap": lambda _cmdline: True},
                env=self.env,
                cwd=ROOT,
                count_records=True,
                save_stdout=save,
                stderr_path=self.work / f"{impl}-tap.stderr",
            )
            self.sb.clear_exports()
            _check(run, f"{impl} tap")
            created = self.sb.cordial.first_export_after(run.started)
            done = self.sb.cordial.first_done_after(run.started)
            if created is None or run.last_record_at is None:
                raise RuntimeError(f"{impl} tap: no export job or no RECORD seen")
            extra = {"process start to export job": created - run.started}
            if done is not None:
                extra["export job (Cordial stand-in) s"] = done - created
                extra["job Done to last RECORD s"] = run.last_record_at - done
            extra["process wall s"] = run.wall_seconds
            return Result(
                "tap",
                impl,
                self.events,
                run.records_seen,
                run.last_record_at - created,
                peak_rss=run.peak_rss,
                extra=extra,
            )

        return self._best(f"tap {impl}", impl, once)

    # -- (b) target alone -------------------------------------------------------------------
    def target(
        self, impl: str, settings: dict[str, Any] | None = None, name: str | None = None
    ) -> Result:
        """From the target's start (stdin: the saved tap output) to the last accepted upload."""

        def once(_attempt: int) -> Result:
            self.sb.lytics.clear()
            with open(self.tap_output, "rb") as stdin:
                run = measure.run_measured(
                    self._target_cmd(impl, settings),
                    roles={"target": lambda _cmdline: True},
                    env=self.env,
                    cwd=ROOT,
                    stdin=stdin,
                    stderr_path=self.work / f"{impl}-target.stderr",
                )
            _check(run, f"{impl} target")
            lytics = self.sb.lytics
            if lytics.last_accepted_at is None:
                raise RuntimeError(f"{impl} target: Lytics accepted nothing")
            return Result(
                "target",
                impl,
                self.events,
                lytics.accepted,
                lytics.last_accepted_at - run.started,
                peak_rss=run.peak_rss,
                extra={"uploads": lytics.uploads, "process wall s": run.wall_seconds},
            )

        return self._best(name or f"target {impl}", impl, once)

    def save_tap_output(self) -> None:
        """Run our tap once to save its output (when the tap is not measured in this run)."""
        run = measure.run_measured(
            self._tap_cmd("ours"),
            roles={"tap": lambda _cmdline: True},
            env=self.env,
            cwd=ROOT,
            count_records=True,
            save_stdout=self.tap_output,
            stderr_path=self.work / "ours-tap.stderr",
        )
        self.sb.clear_exports()
        _check(run, "our tap")

    # -- profiles ---------------------------------------------------------------------------
    def profiles(self, results: list[Result]) -> dict[str, str]:
        """cProfile summaries of our tap and target: with --profile, or where a ratio goal fails."""
        out: dict[str, str] = {}
        for kind in ("tap", "target"):
            goal = ratio_goal(kind, self.events) or 0.0
            ours = next((r for r in results if (r.kind, r.impl) == (kind, "ours")), None)
            stock = next((r for r in results if (r.kind, r.impl) == (kind, "stock")), None)
            missed = ours is not None and stock is not None and ours.rate < goal * stock.rate
            if not (self.args.profile or missed):
                continue
            if kind == "target" and not self.tap_output.exists():
                continue
            _log(f"profiling our {kind} (cProfile)")
            cmd = self._tap_cmd("ours") if kind == "tap" else self._target_cmd("ours")
            self.sb.lytics.clear()
            with open(self.tap_output if kind == "target" else os.devnull, "rb") as stdin:
                out[kind] = profiling.profile(
                    [sys.executable, *cmd],
                    out=self.work / f"{kind}.prof",
                    env=self.env,
                    cwd=ROOT,
                    stdin=stdin,
                )
            self.sb.clear_exports()
            (RESULTS / f"profile-{kind}.txt").write_text(out[kind])
        return out

    # -- (c) meltano run --------------------------------------------------------------------
    def pipeline(self, impl: str, project: MeltanoProject) -> Result:
        """``meltano run`` from its start to its exit; RSS of tap and target apart."""
        if impl in ("ours", OURS_BATCH):
            tap, target = TAP, TARGET
            tap_config = self.sb.tap_config(stock=False)
            target_config = self.sb.target_config()
            if impl == OURS_BATCH:
                root = (self.work / "batches").as_uri()
                tap_config["batch_config"] = {
                    "encoding": {"format": "jsonl", "compression": "none"},
                    "storage": {"root": root},
                }
                # The target reads BATCH files only under the roots it is given.
                target_config["batch_file_roots"] = [root]
            settings = {
                **self.sb.meltano_env(
                    "TAP_CORDIAL_ACTIVITY", _meltano_settings(project, TAP, tap_config)
                ),
                **self.sb.meltano_env(
                    "TARGET_LYTICS", _meltano_settings(project, TARGET, target_config)
                ),
            }
            roles = {
                "meltano": measure.cmdline_has(f"{BIN}/meltano"),
                "tap": measure.cmdline_has(f"bin/{TAP}"),
                "target": measure.cmdline_has(f"bin/{TARGET}"),
            }
        else:
            tap, target = STOCK_TAP, STOCK_TARGET
            settings = {
                **self.sb.meltano_env(
                    "STOCK_TAP_CORDIAL",
                    _meltano_settings(project, STOCK_TAP, self.sb.tap_config(stock=True)),
                ),
                **self.sb.meltano_env("STOCK_TARGET_LYTICS", self.sb.target_config()),
            }
            roles = {
                "meltano": measure.cmdline_has(f"{BIN}/meltano"),
                "tap": measure.cmdline_has(f"bin/{STOCK_TAP}", "benchmarks.stock_tap"),
                "target": measure.cmdline_has(f"bin/{STOCK_TARGET}", "benchmarks.stock_target"),
            }

        def once(_attempt: int) -> Result:
            self.sb.lytics.clear()
            run = measure.run_measured(
                project.run_command(tap, target),
                roles=roles,
                tree=True,
                env=project.env(settings),
                cwd=project.dir,
                stderr_path=self.work / f"{impl}-meltano.stderr",
            )
            self.sb.clear_exports()
            _check(run, f"meltano run ({impl})")
            lytics = self.sb.lytics
            extra: dict[str, float] = {"uploads": lytics.uploads}
            created = self.sb.cordial.first_export_after(run.started)
            if created is not None:
                extra["meltano start to export job s"] = created - run.started
            if lytics.last_accepted_at is not None:
                extra["last upload to meltano exit s"] = run.ended - lytics.last_accepted_at
            return Result(
                "pipeline",
                impl,
                self.events,
                lytics.accepted,
                run.wall_seconds,
                peak_rss=run.peak_rss,
                extra=extra,
            )

        return self._best(f"meltano run {impl}", impl, once)


def _meltano_settings(
    project: MeltanoProject, plugin: str, config: dict[str, Any]
) -> dict[str, Any]:
    """A plugin's settings minus those Meltano cannot take from the environment.

    Meltano 4.4 turns a ``kind: decimal`` value read from an environment variable into a ``Decimal``
    that it then fails to serialize (``meltano run`` dies with "Object of type Decimal is not JSON
    serializable"). Those settings (poll interval, job timeout) keep the values of meltano.yml's
    ``sandbox`` environment, or of the stock plugin's definition.
    """
    decimal = project.decimal_settings(plugin)
    return {key: value for key, value in config.items() if key not in decimal}


def _head(text: str, lines: int) -> str:
    """The first ``lines`` non-blank lines of a pstats report (the own-time table)."""
    return "\n".join([line for line in text.splitlines() if line.strip()][:lines])


def _check(run: measure.Run, what: str) -> None:
    if run.returncode != 0:
        raise RuntimeError(f"{what} exited with {run.returncode}:\n{run.stderr_tail()}")


def _schema_differences(ours: Path, stock: Path) -> list[str]:
    """Compare the first SCHEMA message of both taps' output (the baseline must match)."""

    def schema(path: Path) -> dict:
        with open(path, "rb") as handle:
            for line in handle:
                message = orjson.loads(line)
                if message.get("type") == "SCHEMA":
                    return message["schema"]
        return {}

    a, b = schema(ours).get("properties", {}), schema(stock).get("properties", {})
    return [
        f"{key}: ours {a.get(key)} / stock {b.get(key)}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def run_size(
    count: int, args: argparse.Namespace, project: MeltanoProject | None, *, main: bool
) -> tuple[list[Result], list[str], dict[str, str], list[str]]:
    """All measurements on a dataset of ``count`` events, profiles (see Bench.profiles) and the
    slow-link section (Markdown), if measured."""
    work = WORK / str(count)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    dataset = Dataset(count, end - WINDOW, end)
    _log(f"generating {count:,} events")
    events = generate_events(count, seed=args.seed, start=dataset.start, end=dataset.end)
    notes: list[str] = []
    results: list[Result] = []
    slow_link_text: list[str] = []
    # The stock baselines and the profiles belong to the main size; --compare-small is ours only.
    impls = ["ours", "stock"] if main and not args.no_stock else ["ours"]
    with Sandbox(dataset, events, work) as sb:
        _log(f"sandbox up: {len(sb.cordial.events):,} events, sshd on port {sb.sftp.port}")
        bench = Bench(sb, args, work)
        if "tap" in args.only:
            # The stock tap twice: with paramiko prefetch (the baseline) and without; ours
            # through SFTP and through S3 (issue 28).
            plain = "stock" in impls and not args.skip_no_prefetch
            tap_impls = [impls[0], OURS_S3, *impls[1:]]
            tap_impls = [*tap_impls, STOCK_NO_PREFETCH] if plain else tap_impls
            for impl in tap_impls:
                results.append(bench.tap(impl))
            stock_output = work / "stock-tap-output.jsonl"
            if stock_output.exists():
                diff = _schema_differences(bench.tap_output, stock_output)
                if diff:
                    notes.append("SCHEMA of the stock tap differs from ours: " + "; ".join(diff))
                stock_output.unlink()
        if "target" in args.only:
            if not bench.tap_output.exists():
                raise SystemExit("the target measurement needs the tap's output: add 'tap'")
            for impl in impls:
                results.append(bench.target(impl))
        if "pipeline" in args.only and project is not None:
            for impl in [impls[0], OURS_BATCH, *impls[1:]]:
                results.append(bench.pipeline(impl, project))
        if "slow-link" in args.only and main:
            if not bench.tap_output.exists():
                bench.save_tap_output()
            links = slow_link.measure_links(
                sb.lytics, lambda settings, label: bench.target("ours", settings, label)
            )
            slow_link_text.append(slow_link.render(links))
        profiles = bench.profiles(results) if main else {}
    if not args.keep_output:
        bench.tap_output.unlink(missing_ok=True)
    return results, notes, profiles, slow_link_text


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(prog="scripts/bench.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="dataset size (200,000)")
    parser.add_argument(
        "--compare-small",
        nargs="?",
        type=int,
        const=200_000,
        default=None,
        metavar="N",
        help="also measure our plugins at N events (200,000) to compare peak RSS",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each of our measurements, best kept (3)"
    )
    parser.add_argument(
        "--stock-repeat", type=int, default=2, help="runs of each stock measurement (2)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--only",
        default="tap,target,pipeline",
        type=lambda text: set(text.split(",")),
        help="comma-separated subset of tap,target,pipeline,slow-link (slow-link: only on request)",
    )
    parser.add_argument("--no-stock", action="store_true", help="skip the stock baselines")
    parser.add_argument(
        "--skip-no-prefetch",
        action="store_true",
        help="skip the stock tap's second row, without prefetch (the slowest measurement)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile our tap and target (done anyway where a ratio goal is missed)",
    )
    parser.add_argument("--keep-output", action="store_true", help="keep the saved tap output")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.stock_repeat < 1:
        parser.error("--repeat and --stock-repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print and save the table."""
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    project = None
    if "pipeline" in args.only:
        project = MeltanoProject(ROOT, WORK / "meltano-project")
        _log("preparing the Meltano project copy (meltano install when needed)")
        project.prepare(WORK / "meltano-install.log")
    started = datetime.now(UTC)
    results, notes, profiles, sections = run_size(args.events, args, project, main=True)
    if args.compare_small and args.compare_small != args.events:
        small, small_notes, _, _ = run_size(args.compare_small, args, project, main=False)
        results += small
        notes += small_notes
    command = " ".join(["scripts/bench.sh", *(sys.argv[1:] if argv is None else argv)])
    header = [
        "## Benchmark results",
        "",
        f"- When: {started:%Y-%m-%d %H:%M} UTC; command: `{command}`",
        f"- Machine: {machine_line()}",
        f"- Each figure is the best of {args.repeat} runs ({args.stock_repeat} for the stock "
        "plugins), as the 2-core machine is shared with other work; peak RSS is "
        "the largest over the runs, per process (kernel high-water mark).",
        "- (a) tap: export job creation to the last RECORD on stdout (includes the stand-in's "
        "export writing and polling); (b) target: process start, stdin from the saved tap output, "
        "to the last upload the Lytics stand-in accepted; (c) `meltano run --full-refresh`: "
        "command start to exit.",
        "- Stock tap: singer-sdk defaults, the export downloaded with paramiko's prefetching "
        "`getfo`, then gzip + `json.loads` (the baseline of every tap ratio); the same tap with "
        "plain `SFTPFile` reads (no prefetch) is the second, labelled row. Stock target: "
        "BatchSink, default reader, jsonschema validation on.",
        *(f"- Note: {note}" for note in notes),
    ]
    text = render(results, header=header)
    for section in sections:
        text += "\n" + section
    for kind, summary in profiles.items():
        text += (
            f"\n### Profile of our {kind} ({args.events:,} events, cProfile; full: "
            f"benchmarks/results/profile-{kind}.txt)\n\n```\n" + _head(summary, 45) + "\n```\n"
        )
    args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
