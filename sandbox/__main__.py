"""Command line: ``python -m sandbox up|show|add-events``.

``up`` runs the three services in the foreground until SIGINT/SIGTERM and writes an env file that
configures both plugins through Meltano's env-var convention, plus a small JSON file with the admin
URLs (no secrets) that ``show`` and ``add-events`` read.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import threading
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox.cordial import CordialStandIn
from sandbox.events import generate_events, load_events_jsonl
from sandbox.lytics import LyticsStandIn
from sandbox.s3 import MotoS3Server
from sandbox.sftp import start_sftp_server

DEFAULT_ENV_FILE = Path(".sandbox/env.sh")
STATE_FILE_NAME = "sandbox.json"
READY_LINE = "SANDBOX READY"
#: Bucket and prefix of the exports with ``up --destination s3``.
S3_BUCKET = "cordial-exports"
S3_PREFIX = "cordial/activity"


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plugin_env(
    sftp: Any,
    cordial: CordialStandIn,
    lytics: LyticsStandIn,
    *,
    start_date: datetime,
    s3: MotoS3Server | None = None,
) -> dict[str, str]:
    """Environment variables that configure tap-cordial-activity and target-lytics.

    Only addresses and credentials: the sandbox's tuning (poll interval, retries) lives in
    meltano.yml's sandbox environment. With ``s3``, the exports go through its bucket
    :data:`S3_BUCKET` instead of SFTP.
    """
    if s3 is not None:
        return {
            "TAP_CORDIAL_ACTIVITY_API_KEY": cordial.api_key,
            "TAP_CORDIAL_ACTIVITY_API_URL": cordial.url,
            "TAP_CORDIAL_ACTIVITY_START_DATE": _rfc3339(start_date),
            "TAP_CORDIAL_ACTIVITY_EXPORT_DESTINATION": "s3",
            "TAP_CORDIAL_ACTIVITY_S3_BUCKET": S3_BUCKET,
            "TAP_CORDIAL_ACTIVITY_S3_PREFIX": S3_PREFIX,
            "TAP_CORDIAL_ACTIVITY_S3_REGION": s3.region,
            "TAP_CORDIAL_ACTIVITY_S3_ENDPOINT_URL": s3.url,
            "TAP_CORDIAL_ACTIVITY_S3_ACCESS_KEY_ID": s3.access_key_id,
            "TAP_CORDIAL_ACTIVITY_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
            "TARGET_LYTICS_API_TOKEN": lytics.token,
            "TARGET_LYTICS_API_URL": lytics.url,
        }
    return {
        "TAP_CORDIAL_ACTIVITY_API_KEY": cordial.api_key,
        "TAP_CORDIAL_ACTIVITY_API_URL": cordial.url,
        "TAP_CORDIAL_ACTIVITY_START_DATE": _rfc3339(start_date),
        "TAP_CORDIAL_ACTIVITY_SFTP_HOST": sftp.host,
        "TAP_CORDIAL_ACTIVITY_SFTP_PORT": str(sftp.port),
        "TAP_CORDIAL_ACTIVITY_SFTP_USERNAME": sftp.username,
        "TAP_CORDIAL_ACTIVITY_SFTP_PATH": sftp.sftp_path,
        "TAP_CORDIAL_ACTIVITY_SFTP_PASSWORD": sftp.password,
        "TAP_CORDIAL_ACTIVITY_SFTP_HOST_KEY": sftp.host_key_line,
        "TARGET_LYTICS_API_TOKEN": lytics.token,
        "TARGET_LYTICS_API_URL": lytics.url,
    }


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (it holds secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the services, write the env file, print the readiness line, wait for a signal."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    env_file = Path(args.env_file)
    state_file = env_file.parent / STATE_FILE_NAME
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    start = end - timedelta(hours=args.hours)
    events = (
        load_events_jsonl(args.events_file)
        if args.events_file
        else generate_events(args.events, seed=args.seed, start=start, end=end)
    )
    sftp = start_sftp_server(allow_fallback=not args.require_openssh)
    s3 = MotoS3Server() if args.destination == "s3" else None
    try:
        if s3 is not None:
            s3.start()
            s3.create_bucket(S3_BUCKET)
        with (
            CordialStandIn(
                sftp_root=sftp.root,
                sftp_path=sftp.sftp_path,
                events=events,
                seed=args.seed,
                sftp=sftp,
                s3=s3,
            ) as cordial,
            LyticsStandIn(count_only=args.count_only) as lytics,
        ):
            env = plugin_env(sftp, cordial, lytics, start_date=start, s3=s3)
            _write_private(
                env_file, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
            )
            state = {
                "pid": os.getpid(),
                "cordial_url": cordial.url,
                "cordial_admin": cordial.base_url + cordial.ADMIN_PREFIX,
                "lytics_url": lytics.url,
                "lytics_admin": lytics.base_url + lytics.ADMIN_PREFIX,
                "sftp": f"{sftp.kind} {sftp.host}:{sftp.port} {sftp.sftp_path}",
                "env_file": str(env_file),
            }
            if s3 is not None:
                state["s3"] = f"{s3.url} s3://{S3_BUCKET}/{S3_PREFIX}/"
            _write_private(state_file, json.dumps(state, indent=2) + "\n")
            print(
                (f"s3: {state['s3']} (moto; the exports go here)\n" if s3 is not None else "")
                + f"sftp: {state['sftp']} (user {sftp.username})\n"
                f"cordial: {cordial.url} ({len(cordial.events)} events from {_rfc3339(start)})\n"
                f"lytics: {lytics.url}\nenv file: {env_file}",
                file=sys.stderr,
            )
            print(READY_LINE, flush=True)
            stop.wait()
    finally:
        sftp.stop()
        if s3 is not None:
            s3.stop()
        for path in (env_file, state_file):
            path.unlink(missing_ok=True)
    return 0


def _state(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.env_file).parent / STATE_FILE_NAME
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise SystemExit(
            f"no running sandbox found ({path} is missing): start 'up' first"
        ) from None


def _call(url: str, payload: Any = None, method: str | None = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(  # noqa: S310 - a local http:// admin URL
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def cmd_show(args: argparse.Namespace) -> int:
    """Print what the Lytics stand-in holds for a stream."""
    admin = _state(args)["lytics_admin"]
    summary = _call(f"{admin}/summary")
    query = urllib.parse.urlencode({"stream": args.stream, "limit": args.limit})
    sample = _call(f"{admin}/events?{query}")
    counts = _call(f"{admin}/counts?{urllib.parse.urlencode({'stream': args.stream})}")
    profiles = _pick_profiles(_call(f"{admin}/profiles?limit=50"), args.profiles)
    if args.json:
        out = {"summary": summary, "counts": counts, "sample": sample, "profiles": profiles}
        print(json.dumps(out, indent=2))
        return 0
    if args.profiles_only:
        _print_profiles(profiles)
        return 0
    total = summary["streams"].get(args.stream, 0)
    rejected = summary["rejected"].get(args.stream, 0)
    print(f"Lytics stream {args.stream}: {total} events ({rejected} rejected)")
    print(f"requests: {summary['requests']}  statuses: {summary['statuses']}")
    if counts["values"]:
        print(f"events per {counts['field']}:")
        width = max(len(str(k)) for k in counts["values"])
        for value, count in sorted(counts["values"].items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {value!s:<{width}}  {count:>8}")
    if sample["events"]:
        print(f"first {len(sample['events'])} events:")
        for event in sample["events"]:
            print("  " + json.dumps(event, ensure_ascii=False, sort_keys=True))
    if args.profiles:
        _print_profiles(profiles)
    return 0


#: The user fields a profile line shows: (label, field).
PROFILE_FIELDS = (
    ("last action", "cr_event_action"),
    ("last event", "cr_event_timestamp"),
    ("message", "cr_message_name"),
)


def _pick_profiles(listing: dict[str, Any], count: int) -> dict[str, Any]:
    """Up to ``count`` of the busiest profiles, those with a message name first."""
    ranked = sorted(listing["profiles"], key=lambda p: "cr_message_name" not in p["fields"])
    return {**listing, "profiles": ranked[:count]}


def _print_profiles(listing: dict[str, Any]) -> None:
    if not listing["schema_version"]:
        print(
            "user profiles: none, no schema is published (run "
            "'meltano invoke target-lytics:schema-publish' or 'target-lytics --schema-publish')"
        )
        return
    print(
        f"user profiles (schema version {listing['schema_version']}, merged by "
        f"{', '.join(listing['identifier_fields'])}): {listing['total']} in all, for example"
    )
    for profile in listing["profiles"]:
        fields = profile["fields"]
        contact = fields.get("cr_contact_id", "?")
        shown = ", ".join(f"{label} {fields.get(name, '-')}" for label, name in PROFILE_FIELDS)
        print(f"  contact {contact}: {shown} ({profile['events']} events)")


def cmd_add_events(args: argparse.Namespace) -> int:
    """Add generated events to the running Cordial stand-in (times after everything exported)."""
    admin = _state(args)["cordial_admin"]
    payload: dict[str, Any] = {"generate": args.count}
    if args.seed is not None:
        payload["seed"] = args.seed
    result = _call(f"{admin}/events", payload)
    print(f"added {result['added']} events between {result['start']} and {result['end']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m sandbox`` argument parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env-file",
        default=str(DEFAULT_ENV_FILE),
        help="env file written by 'up' (its folder also holds sandbox.json); default %(default)s",
    )
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", parents=[common], help="run SFTP, Cordial and Lytics stand-ins until SIGINT/SIGTERM"
    )
    up.add_argument("--events", type=int, default=2000, help="generated events (%(default)s)")
    up.add_argument("--seed", type=int, default=7, help="generator seed (%(default)s)")
    up.add_argument(
        "--events-file",
        help="serve the events of this JSON Lines file (.gz too) instead of generated ones",
    )
    up.add_argument(
        "--hours", type=float, default=48, help="events span the last N hours (%(default)s)"
    )
    up.add_argument("--count-only", action="store_true", help="Lytics keeps counts, not events")
    up.add_argument(
        "--destination", choices=("sftp", "s3"), default="sftp",
        help="where Cordial writes the exports: the SFTP server, or moto's S3 (%(default)s)",
    )
    up.add_argument(
        "--require-openssh",
        action="store_true",
        default=os.environ.get("SANDBOX_REQUIRE_OPENSSH", "") not in ("", "0"),
        help="never fall back to the paramiko SFTP server",
    )
    up.set_defaults(func=cmd_up)
    show = sub.add_parser("show", parents=[common], help="print what the Lytics stand-in received")
    show.add_argument("--stream", default="cordial_activity")
    show.add_argument("--limit", type=int, default=3, help="sample events shown (%(default)s)")
    show.add_argument("--profiles", type=int, default=3, help="user profiles shown (%(default)s)")
    show.add_argument("--profiles-only", action="store_true", help="print the user profiles alone")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)
    add = sub.add_parser(
        "add-events", parents=[common], help="add N new events to the Cordial stand-in"
    )
    add.add_argument("count", type=int)
    add.add_argument("--seed", type=int, default=None)
    add.set_defaults(func=cmd_add_events)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`show | head`): not an error worth a traceback. stdout goes to
        # /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process ended by SIGPIPE
    return status


if __name__ == "__main__":
    sys.exit(main())
