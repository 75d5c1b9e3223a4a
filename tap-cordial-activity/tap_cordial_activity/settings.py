"""The tap's settings: their schema (the one place defaults live) and their validation."""

from __future__ import annotations

import datetime
import math
import unicodedata
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from singer_sdk import typing as th

from tap_cordial_activity.formats import FORMATS
from tap_cordial_activity.keys import load_private_key, parse_host_keys
from tap_cordial_activity.timeutil import MomentRangeError, parse_moment

DEFAULT_ACTIONS = ["message-sent", "open", "click", "optout", "bounce", "complaint", "custom"]
SECRET_SETTINGS = frozenset(
    {"api_key", "sftp_password", "sftp_private_key", "sftp_private_key_passphrase",
     "s3_secret_access_key", "cordial_s3_secret_access_key"}
)
#: ``export_destination`` values: the keys of ``destinations.DESTINATIONS`` (a test checks).
EXPORT_DESTINATIONS = ("sftp", "s3")
#: Settings each destination requires (a missing or empty one is listed as a problem).
DESTINATION_REQUIRED = {
    "sftp": ("sftp_host", "sftp_username", "sftp_path"),
    "s3": ("s3_bucket", "s3_region", "s3_prefix"),
}


#: Number settings take a JSON number or a string holding one: Meltano passes settings it
#: declares as `kind: string` (fractional values) as text, and crashes on `kind: decimal`.
_NUMBER = th.CustomType({"type": ["number", "string"]})
_INTEGER = th.CustomType({"type": ["integer", "string"]})


def _secret(name: str, description: str, *, required: bool = False) -> th.Property:
    """A text setting marked secret (never echoed, masked by Meltano)."""
    return th.Property(
        name, th.StringType, secret=True, required=required, description=description
    )


CONFIG_SCHEMA: dict[str, Any] = th.PropertiesList(
    _secret(
        "api_key", "Cordial API key (HTTP Basic user name, empty password).", required=True
    ),
    th.Property(
        "api_url", th.StringType, default="https://api.cordial.io/v2",
        description="Cordial API base URL, e.g. https://api.usw2.cordial.io/v2.",
    ),
    th.Property(
        "start_date", th.StringType,
        description="'Import Since': yyyy-mm-dd or an ISO 8601 date-time; empty means 7 days "
        "before the run. Dates before 2000 are refused; a start more than 18 months before the "
        "run (Cordial purges older events) is warned about.",
    ),
    th.Property(
        "end_date", th.StringType,
        description="Optional upper bound (yyyy-mm-dd or ISO 8601), used as given when it "
        "is before the run's time minus `settle_minutes`; a later one is cut to that, with a "
        "warning (the next run goes on from there). Default: the run's time minus "
        "`settle_minutes`.",
    ),
    th.Property(
        "actions", th.ArrayType(th.StringType), default=DEFAULT_ACTIONS,
        description="Cordial action names to export; `custom` means every custom event (the "
        "export is then requested without an action filter and the tap keeps the selected ones, "
        "unless `custom_actions` names them).",
    ),
    th.Property(
        "custom_actions", th.ArrayType(th.StringType), default=[],
        description="Names of your custom events. When set they are sent to Cordial by name "
        "(instead of `custom`) and stand for `custom` in `actions`; other custom events are "
        "not exported.",
    ),
    th.Property(
        "export_format", th.StringType, default="json", allowed_values=list(FORMATS),
        description="File format Cordial writes: json (JSON Lines) or csv.",
    ),
    th.Property("compress", th.BooleanType, default=True, description="Ask for gzip files."),
    th.Property(
        "export_window_hours", _NUMBER, default=24,
        description="Longest span of one export job; a backfill becomes several jobs.",
    ),
    th.Property(
        "target_events_per_window", _INTEGER, default=2_000_000,
        description="Events aimed at per export job: the window span grows when jobs come back "
        "small and shrinks when large (1 hour to 31 days; the first window of a run is "
        "`export_window_hours` wide). 0: fixed windows of `export_window_hours`.",
    ),
    th.Property(
        "max_concurrent_exports", _INTEGER, default=3,
        description="Export jobs in flight at once: the next windows' jobs run while a window "
        "is read; records and STATE stay in window order. 1: one job at a time.",
    ),
    th.Property(
        "settle_minutes", _INTEGER, default=15,
        description="Without `end_date`, export only up to this many minutes before the run, "
        "so events Cordial records late are still exported (by the next run).",
    ),
    th.Property(
        "count_mismatch", th.StringType, default="fail", allowed_values=["fail", "warn"],
        description="When a window's files hold fewer records than Cordial reports for the "
        "job: fail (no STATE past the window; the next run exports it again) or warn.",
    ),
    th.Property(
        "max_bad_records", _INTEGER, default=0,
        description="Bad records (a line that is not JSON, a JSON value that is not an object, "
        "a CSV row of the wrong width, an event without a usable `_id` or `time`) set aside per "
        "run as records of the `activity_rejects` stream; the window completes and its STATE "
        "moves on. One more fails the run. 0: the first bad record fails the run.",
    ),
    th.Property(
        "short_export_wait_seconds", _NUMBER, default=30,
        description="How long to wait for a short export's files to stop growing before "
        "reading them again.",
    ),
    th.Property(
        "progress_interval_seconds", _NUMBER, default=30,
        description="Seconds between two progress lines while an export file is read.",
    ),
    th.Property(
        "export_destination", th.StringType, default="sftp",
        allowed_values=list(EXPORT_DESTINATIONS),
        description="Where Cordial writes the export files and the tap reads them: sftp "
        "(the `sftp_*` settings) or s3 (the `s3_*` settings).",
    ),
    th.Property(
        "sftp_host", th.StringType,
        description="SFTP server Cordial writes to (required with `export_destination` sftp).",
    ),
    th.Property("sftp_port", _INTEGER, default=22, description="SFTP port."),
    th.Property(
        "sftp_username", th.StringType,
        description="SFTP user name (required with `export_destination` sftp).",
    ),
    th.Property(
        "sftp_path", th.StringType,
        description="SFTP folder of the export files (required with `export_destination` sftp).",
    ),
    _secret(
        "sftp_password",
        "SFTP password: the tap's login, and sent to Cordial as the destination password.",
    ),
    _secret(
        "sftp_private_key", "Private key text (Ed25519, ECDSA or RSA) for the tap's login."
    ),
    _secret("sftp_private_key_passphrase", "Passphrase of `sftp_private_key`."),
    th.Property(
        "cordial_saved_key", th.StringType,
        description="Name of an SFTP key in Cordial's Secrets Vault, sent as the destination's "
        "savedKey instead of the password.",
    ),
    th.Property(
        "sftp_host_key", th.StringType,
        description="The server's public key as `ssh-keyscan -p PORT HOST` prints it (or "
        "`keytype base64`); without it, the known_hosts file is used. Unknown or different "
        "keys are refused.",
    ),
    th.Property(
        "sftp_known_hosts_path", th.StringType,
        description="known_hosts file used when `sftp_host_key` is empty; "
        "default ~/.ssh/known_hosts.",
    ),
    th.Property(
        "s3_bucket", th.StringType,
        description="S3 bucket Cordial writes to (required with `export_destination` s3).",
    ),
    th.Property(
        "s3_prefix", th.StringType,
        description="Key prefix (folder) of the export files in `s3_bucket`, e.g. "
        "cordial/exports; sent to Cordial as the destination path (required with "
        "`export_destination` s3).",
    ),
    th.Property(
        "s3_region", th.StringType,
        description="The bucket's region, e.g. us-west-2 (required with `export_destination` s3).",
    ),
    th.Property(
        "s3_endpoint_url", th.StringType,
        description="Endpoint of an S3-compatible store (the tap's reads only); empty: AWS.",
    ),
    th.Property(
        "s3_access_key_id", th.StringType,
        description="Access key id of the tap's reads; empty: the default AWS credential chain.",
    ),
    _secret("s3_secret_access_key", "Secret access key of the tap's reads."),
    th.Property(
        "cordial_s3_access_key_id", th.StringType,
        description="Access key id Cordial writes with, sent in the export request; empty: an "
        "IAM role set up on Cordial's side.",
    ),
    _secret(
        "cordial_s3_secret_access_key",
        "Secret access key Cordial writes with, sent in the export request.",
    ),
    th.Property(
        "poll_interval_seconds", _NUMBER, default=15,
        description="Seconds between two polls of the export job.",
    ),
    th.Property(
        "job_timeout_seconds", _NUMBER, default=7200,
        description="Longest wait for one export job.",
    ),
    th.Property(
        "limit_records_per_file", _INTEGER, default=0,
        description="Ask Cordial to split the export into files of at most N records "
        "(0: one file).",
    ),
    th.Property(
        "delete_exported_files", th.BooleanType, default=False,
        description="Delete the export files the tap read, once their window is "
        "delivered: at the start of the next run, which starts from that window's STATE. A run "
        "ends early once its STATE lists 128 files or exports to delete (a bounded STATE).",
    ),
    th.Property(
        "max_concurrent_prefetch_requests", _INTEGER, default=64,
        description="SFTP read requests in flight at once (OpenSSH uses 64).",
    ),
    th.Property(
        "request_timeout_seconds", _NUMBER, default=60,
        description="Timeout of one Cordial HTTP request and of SFTP operations.",
    ),
    th.Property(
        "max_retries", _INTEGER, default=8,
        description="Retries of a Cordial call after 429, 5xx or a connection error.",
    ),
    th.Property(
        "retry_initial_delay_seconds", _NUMBER, default=1.0,
        description="Backoff before the first retry; doubles each retry, with full jitter.",
    ),
    th.Property(
        "retry_max_delay_seconds", _NUMBER, default=60.0,
        description="Longest delay between two retries.",
    ),
).to_dict()

#: Each setting's default, read from :data:`CONFIG_SCHEMA` (nowhere else types a default).
DEFAULTS: dict[str, Any] = {
    name: spec["default"]
    for name, spec in CONFIG_SCHEMA["properties"].items()
    if "default" in spec
}


#: Dates before this are refused: no Cordial account holds events that old, and a backfill
#: from year 1 would create tens of thousands of export jobs.
EARLIEST_MOMENT = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)

#: Largest accepted value of number settings: far beyond any useful value, and small enough
#: for ``timedelta``, ``time.sleep`` and socket timeouts (``1e300`` would overflow them).
NUMBER_MAXIMA: dict[str, int] = {
    "export_window_hours": 744,  # 31 days, the longest window sized to the data
    "target_events_per_window": 1_000_000_000,
    "max_concurrent_exports": 100,
    "settle_minutes": 10_080,  # 7 days
    "short_export_wait_seconds": 3600,
    "progress_interval_seconds": 86_400,
    "poll_interval_seconds": 3600,
    "job_timeout_seconds": 604_800,  # 7 days
    "limit_records_per_file": 1_000_000_000,
    "max_bad_records": 1_000_000_000,
    "max_concurrent_prefetch_requests": 1024,
    "request_timeout_seconds": 3600,
    "max_retries": 100,
    "retry_initial_delay_seconds": 3600,
    "retry_max_delay_seconds": 3600,
}

#: Settings whose surrounding whitespace is a paste mistake (a trailing newline, a space): the
#: secrets, and the key names and ids that go with them.
STRIPPED_SECRETS = (
    *sorted(SECRET_SETTINGS), "cordial_saved_key", "s3_access_key_id", "cordial_s3_access_key_id",
)


def secret_values(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The values of the settings marked secret, to hide where a server may echo them."""
    return tuple(v for v in (config.get(n) for n in SECRET_SETTINGS) if isinstance(v, str) and v)


def strip_secrets(config: dict[str, Any]) -> None:
    """Remove surrounding whitespace from the secrets in ``config`` (in place)."""
    for name in STRIPPED_SECRETS:
        value = config.get(name)
        if isinstance(value, str):
            config[name] = value.strip()


def header_value_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot go into an HTTP header (None if it can); never quotes the value."""
    for char in value:
        if ord(char) > 0xFF:
            return f"`{name}` holds a character outside Latin-1, which an HTTP header cannot carry."
        if unicodedata.category(char) == "Cc":
            return f"`{name}` holds a control character, which an HTTP header cannot carry."
    return None


def setting(config: Mapping[str, Any], name: str) -> Any:
    """The setting's value, or its schema default when it is unset (missing or null)."""
    value = config.get(name)
    return DEFAULTS.get(name) if value is None else value


#: Number settings (name -> whether it must be whole), from :data:`CONFIG_SCHEMA`.
NUMBER_SETTINGS: dict[str, bool] = {
    name: "integer" in spec["type"]
    for name, spec in CONFIG_SCHEMA["properties"].items()
    if "number" in spec.get("type", ()) or "integer" in spec.get("type", ())
}


def parse_number(name: str, value: Any) -> int | float:
    """A number setting's value (a number, or text holding one); ``ValueError`` names it."""
    whole = NUMBER_SETTINGS[name]
    kind = "a whole number" if whole else "a number"
    if isinstance(value, str):
        try:
            number: float = float(value.strip())
        except ValueError as exc:
            raise ValueError(f"`{name}` must be {kind} (got {value!r}).") from exc
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        # singer-sdk reads JSON config files with Decimal for fractions.
        number = float(value)
    else:
        raise ValueError(f"`{name}` must be {kind} (got {value!r}).")
    if not math.isfinite(number) or (whole and number != int(number)):
        raise ValueError(f"`{name}` must be {kind} (got {value!r}).")
    return int(number) if whole else number


def number(config: Mapping[str, Any], name: str) -> float:
    """A number setting (or its default) as a float."""
    return float(parse_number(name, setting(config, name)))


def integer(config: Mapping[str, Any], name: str) -> int:
    """A whole-number setting (or its default) as an int."""
    return int(parse_number(name, setting(config, name)))


def schema_error(error: Any) -> str:
    """A JSON-schema error as one line, without echoing a secret value."""
    path = list(error.absolute_path)
    if path and path[0] in SECRET_SETTINGS:
        return f"`{path[0]}` must be a text value"
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        return f"`{missing}` is required"
    where = f"`{'.'.join(str(p) for p in path)}`: " if path else ""
    return f"{where}{error.message}"


def config_problems(config: dict[str, Any]) -> list[str]:
    """Every problem with the settings beyond their JSON types, as user-facing sentences."""
    problems: list[str] = []

    def has(name: str) -> bool:
        """Whether ``name`` is set to something other than null or empty text."""
        value = config.get(name)
        return value is not None and value != ""

    # A missing required setting is reported by the JSON schema; an empty one is caught here.
    for name in ("api_key",):
        if name in config and not has(name):
            problems.append(f"`{name}` is required and must not be empty.")
    problems.extend(destination_problems(config))
    sftp = setting(config, "export_destination") == "sftp"

    if sftp and not has("sftp_password") and not has("sftp_private_key"):
        problems.append(
            "No SFTP login for the tap: set `sftp_password` or `sftp_private_key`."
        )
    if sftp and not has("sftp_password") and not has("cordial_saved_key"):
        problems.append(
            "No way for Cordial to write the export to SFTP: set `sftp_password` (sent as the "
            "destination password) or `cordial_saved_key` (a key in Cordial's Secrets Vault)."
        )
    batch_config = config.get("batch_config")
    if isinstance(batch_config, dict) and batch_config:
        problems.extend(_batch_config_problems(batch_config))
    if has("sftp_private_key_passphrase") and not has("sftp_private_key"):
        problems.append("`sftp_private_key_passphrase` is set but `sftp_private_key` is not.")
    if has("sftp_private_key") and isinstance(config.get("sftp_private_key"), str):
        try:
            load_private_key(config["sftp_private_key"], config.get("sftp_private_key_passphrase"))
        except ValueError as exc:
            problems.append(f"`sftp_private_key`: {exc}.")
    if has("sftp_host_key") and isinstance(config.get("sftp_host_key"), str):
        try:
            parse_host_keys(config["sftp_host_key"])
        except ValueError as exc:
            problems.append(
                f"`sftp_host_key`: {exc}. Paste what `ssh-keyscan -p PORT HOST` prints."
            )
    api_key = config.get("api_key")
    if isinstance(api_key, str):
        problem = header_value_problem("api_key", api_key)
        if problem:
            problems.append(problem)
    problems.extend(_url_problems(
        "api_url", config.get("api_url"), "https://api.cordial.io/v2", "logs in with `api_key`"
    ))

    moments: dict[str, datetime.datetime] = {}
    for name in ("start_date", "end_date"):
        value = config.get(name)
        if isinstance(value, str) and value and not value.strip():
            problems.append(
                f"`{name}` is blank: give a date (yyyy-mm-dd) or ISO 8601 date-time, or leave it "
                "unset."
            )
        elif isinstance(value, str) and value.strip():
            try:
                moments[name] = parse_moment(value)
            except MomentRangeError as exc:
                problems.append(f"`{name}` {exc}.")
            except ValueError:
                problems.append(
                    f"`{name}` {value!r} is not a date (yyyy-mm-dd) or ISO 8601 date-time "
                    "(e.g. 2024-05-01 or 2024-05-01T06:00:00Z)."
                )
    for name, moment in moments.items():
        if moment < EARLIEST_MOMENT:
            problems.append(
                f"`{name}` {config[name].strip()!r} is before 2000-01-01: Cordial holds no "
                "events that old (it purges events after 18 months)."
            )
    if "start_date" in moments and "end_date" in moments and (
        moments["end_date"] <= moments["start_date"]
    ):
        problems.append("`end_date` must be after `start_date`.")

    numbers: dict[str, int | float] = {}
    for name in NUMBER_SETTINGS:
        if config.get(name) is None:
            continue
        try:
            numbers[name] = parse_number(name, config[name])
        except ValueError as exc:
            problems.append(str(exc))
    for name in ("export_window_hours", "poll_interval_seconds", "job_timeout_seconds",
                 "request_timeout_seconds", "max_concurrent_prefetch_requests",
                 "max_concurrent_exports", "progress_interval_seconds"):
        if name in numbers and numbers[name] <= 0:
            problems.append(f"`{name}` must be greater than 0 (got {numbers[name]}).")
    for name, most in NUMBER_MAXIMA.items():
        if name in numbers and numbers[name] > most:
            problems.append(f"`{name}` must be at most {most} (got {numbers[name]:g}).")
    poll, timeout = numbers.get("poll_interval_seconds"), numbers.get("job_timeout_seconds")
    poll = DEFAULTS["poll_interval_seconds"] if poll is None else poll
    timeout = DEFAULTS["job_timeout_seconds"] if timeout is None else timeout
    if 0 < timeout < poll:
        problems.append(
            f"`poll_interval_seconds` ({poll:g}) must not be longer than `job_timeout_seconds` "
            f"({timeout:g}): the job would time out before its first poll."
        )
    port = numbers.get("sftp_port")
    if port is not None and not 0 < port < 65536:
        problems.append(f"`sftp_port` must be between 1 and 65535 (got {port}).")
    actions = config.get("actions")
    if isinstance(actions, list) and not [a for a in actions if isinstance(a, str) and a]:
        problems.append("`actions` must name at least one action.")
    for name in ("max_retries", "limit_records_per_file", "retry_initial_delay_seconds",
                 "retry_max_delay_seconds", "target_events_per_window", "settle_minutes",
                 "short_export_wait_seconds", "max_bad_records"):
        if name in numbers and numbers[name] < 0:
            problems.append(f"`{name}` must not be negative (got {numbers[name]}).")
    return problems


def _url_problems(name: str, url: Any, example: str, login: str) -> list[str]:
    """What is wrong with the URL setting ``name``; a URL that may hold a secret is never quoted.

    A user name or password (``user:password@``), a query or a fragment are refused: the tap
    names its URLs in log lines, so they must hold no credential.
    """
    if not isinstance(url, str):
        return []
    try:
        parts = urlsplit(url)
        userinfo = parts.username is not None or parts.password is not None
    except ValueError:
        return [f"`{name}` is not a URL (e.g. {example})."]
    if userinfo or "@" in parts.netloc:
        return [
            f"`{name}` must not hold a user name or password (`user:password@`): the tap "
            f"{login}. Remove them from the URL."
        ]
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return [
            f"`{name}` must not hold a query or fragment (`?...`, `#...`), which log lines would "
            f"show: the tap {login}. Remove it from the URL."
        ]
    if not url.startswith(("https://", "http://")) or not parts.netloc:
        return [f"`{name}` must start with https:// (got {url!r})."]
    return []


def destination_problems(config: Mapping[str, Any]) -> list[str]:
    """The settings ``export_destination`` requires, and S3 keys given by halves."""
    destination = setting(config, "export_destination")
    required = DESTINATION_REQUIRED.get(destination)
    if required is None:
        return []  # not an allowed value: the JSON schema says so
    problems = []
    for name in required:
        value = config.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            problems.append(
                f"`{name}` is required" + (
                    " and must not be empty" if name in config else ""
                ) + f" (`export_destination` is {destination})."
            )
    if destination == "s3":
        for who, pair in (
            ("the tap's reads", ("s3_access_key_id", "s3_secret_access_key")),
            ("Cordial's writes", ("cordial_s3_access_key_id", "cordial_s3_secret_access_key")),
        ):
            given = [n for n in pair if config.get(n)]
            if len(given) == 1:
                missing = next(n for n in pair if n not in given)
                problems.append(
                    f"`{given[0]}` is set but `{missing}` is not: {who} need both keys, or "
                    "neither."
                )
        url = config.get("s3_endpoint_url")
        if isinstance(url, str) and url:
            problems.extend(_url_problems(
                "s3_endpoint_url", url, "https://s3.example.com",
                "reads with `s3_access_key_id` / `s3_secret_access_key`",
            ))
    return problems


def _batch_config_problems(batch_config: dict[str, Any]) -> list[str]:
    """What the tap's BATCH files (JSON Lines, see batch_files.py) cannot honour."""
    problems = []
    encoding = batch_config.get("encoding") or {}
    if encoding.get("format") != "jsonl":
        problems.append(
            "`batch_config.encoding.format` must be `jsonl` (the tap writes JSON Lines batch "
            f"files), not {encoding.get('format')!r}."
        )
    storage = batch_config.get("storage") or {}
    if not storage.get("root"):
        problems.append(
            "`batch_config.storage.root` is required: the folder or URL the batch files go to "
            "(e.g. file:///var/tmp/cordial-batches), which the target must be able to read."
        )
    size = batch_config.get("batch_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        problems.append(f"`batch_config.batch_size` must be a whole number above 0, not {size!r}.")
    return problems
