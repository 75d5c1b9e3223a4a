"""The target's settings: their schema (the one place defaults are written), checks, mapping.

Number settings accept a JSON number or a string holding one (``"30"``, ``"0.1"``): Meltano passes
fractional settings as strings. :func:`parse_number_settings` turns such strings into numbers
before the schema's range checks run, so every problem names its setting.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from singer_sdk import typing as th

from target_lytics.user_fields import (
    ACTIVITY_FIELDS,
    FIELD_ENTRY_SCHEMA,
    WORKFLOWS,
    lytics_field_name,
)

#: Lytics' documented cap per request body.
HARD_MAX_REQUEST_BYTES = 10_000_000

#: Upper bound of ``max_concurrent_uploads``: beyond it a slow link is better served by larger
#: bodies than by more connections.
MAX_CONCURRENT_UPLOADS = 32

#: The ``streams`` entries a user setting is merged over (by Singer stream name).
DEFAULT_STREAMS: dict[str, dict[str, Any]] = {
    "activity": {
        "lytics_stream": "cordial_activity",
        "fields": ACTIVITY_FIELDS,
        "timestamp_field": "cr_event_timestamp",
    },
    # The tap's set-aside records go where the target sets events aside (rejects.rejects_stream),
    # so one Lytics stream holds everything set aside.
    "activity_rejects": {"lytics_stream": "cordial_activity_rejects"},
}

SECRET_SETTINGS = frozenset({"api_token"})

_STREAM_ENTRY = th.ObjectType(
    th.Property(
        "lytics_stream",
        th.StringType,
        description="Lytics stream to upload into (default: the Singer stream's name).",
    ),
    th.Property(
        "fields",
        th.ObjectType(additional_properties=th.CustomType(FIELD_ENTRY_SCHEMA)),
        description=(
            "Source field -> Lytics field, as a name or as {field, type, mergeop, identifier, "
            "shortdesc} (the user field --schema-publish creates). Only these fields are sent "
            "unless include_unmapped_fields is true; without `fields` every field is sent as is."
        ),
    ),
    th.Property(
        "timestamp_field",
        th.StringType,
        description="Lytics field holding the event time (sent as ?timestamp_field=).",
    ),
    additional_properties=False,
)


def _number(
    name: str, *, whole: bool, default: float, description: str, **limits: float
) -> th.Property:
    """A number setting that may also come as text; ``limits`` are JSON-schema range keywords."""
    schema = {"type": ["integer" if whole else "number", "string"], **limits}
    return th.Property(name, th.CustomType(schema), default=default, description=description)


CONFIG_SCHEMA: dict[str, Any] = th.PropertiesList(
    th.Property(
        "api_token",
        th.StringType,
        required=True,
        secret=True,
        description="Lytics API token, sent as the Authorization header.",
    ),
    th.Property(
        "api_url",
        th.StringType,
        default="https://api.lytics.io",
        description="Lytics API base URL, without user, password, query string or fragment.",
    ),
    th.Property(
        "streams",
        th.ObjectType(additional_properties=_STREAM_ENTRY),
        description=(
            "Per Singer stream: {lytics_stream, fields: {source: lytics_field or {field, "
            "type, mergeop, identifier, shortdesc}}, timestamp_field}. Merged over the "
            "defaults by Singer stream name; the default maps `activity` to "
            "`cordial_activity` with the Cordial fields as user fields (cID -> "
            "cr_contact_id, the identifier, ...). Streams not listed go to the Lytics stream "
            "of the same name with their fields as they are."
        ),
    ),
    th.Property(
        "include_unmapped_fields",
        th.BooleanType,
        default=False,
        description="For a mapped stream, also send the fields that have no mapping.",
    ),
    th.Property(
        "dry_run",
        th.BooleanType,
        default=False,
        description="Send dryrun=true: Lytics validates the events but stores nothing.",
    ),
    _number(
        "max_rejected_records",
        whole=True,
        default=0,
        minimum=0,
        description=(
            "Events per run that may be set aside instead of failing the run: one Lytics cannot "
            "take (over 16 KB, or objects inside an array: not sent) or one it refused "
            "(rejected_count, found by dry-run halves, so nothing is stored twice). Each goes "
            "to the Lytics stream <stream>_rejects (stream, key, reason, bytes, head, "
            "rejected_at) and STATE moves past it; one more fails the run. 0: the first fails "
            "the run (one Lytics cannot take before its request is sent)."
        ),
    ),
    _number(
        "max_request_bytes",
        whole=True,
        default=5_000_000,
        minimum=256,
        maximum=HARD_MAX_REQUEST_BYTES,
        description="Largest request body in bytes (at most 10,000,000).",
    ),
    _number(
        "request_timeout_seconds",
        whole=False,
        default=60,
        exclusiveMinimum=0,
        description="Timeout of one upload request.",
    ),
    _number(
        "max_retries",
        whole=True,
        default=8,
        minimum=0,
        description="Retries of a request after 429, 5xx, timeouts or connection errors.",
    ),
    _number(
        "retry_initial_delay_seconds",
        whole=False,
        default=1,
        minimum=0,
        description="Backoff before the first retry; doubles each retry (with jitter).",
    ),
    _number(
        "retry_max_delay_seconds",
        whole=False,
        default=60,
        minimum=0,
        description="Longest backoff between retries (Retry-After may ask for more).",
    ),
    _number(
        "max_concurrent_uploads",
        whole=True,
        default=4,
        minimum=1,
        maximum=MAX_CONCURRENT_UPLOADS,
        description=(
            "Request bodies of one stream in flight at once (memory: about that many bodies); "
            "1 sends one at a time. Halved for a while after Lytics answers 429."
        ),
    ),
    _number(
        "min_state_interval_seconds",
        whole=False,
        default=1,
        minimum=0,
        description=(
            "Shortest time between two STATE messages the target writes; a STATE ready sooner "
            "waits, and a newer one replaces it (0 writes each as soon as Lytics accepted its "
            "records). Meltano stores every STATE it reads (about 13 ms of CPU each); a killed "
            "run loses at most this much progress."
        ),
    ),
    _number(
        "progress_interval_seconds",
        whole=False,
        default=30,
        exclusiveMinimum=0,
        description="Seconds between progress lines while uploading.",
    ),
    th.Property(
        "schema_workflow",
        th.StringType(allowed_values=list(WORKFLOWS)),
        default="auto",
        description=(
            "How --schema-publish writes the user schema: `auto` reads the account setting "
            "enable_schema_patches (and fails if the token may not read it), `direct` writes "
            "fields and mappings then publishes, `patch` uses one schema patch and applies it."
        ),
    ),
    th.Property(
        "publish_others_changes",
        th.BooleanType,
        default=False,
        description=(
            "Let --schema-publish publish a draft that also holds changes this target did not "
            "make (a colleague's unpublished field, or their edit of one of ours); by default it "
            "refuses, naming each, and writes nothing, since a publish makes the whole draft live."
        ),
    ),
    th.Property(
        "delete_batch_files",
        th.BooleanType,
        default=True,
        description=(
            "Delete each BATCH file (a tap's batch_config) once its records are read and handed "
            "to the uploads. The files are intermediate: a failed run resumes from the tap's "
            "STATE, not from the file (a failed upload stops the run before STATE moves past the "
            "file's records, and the next run exports them again). A file whose record fails is "
            "kept."
        ),
    ),
    th.Property(
        "batch_file_roots",
        th.ArrayType(th.StringType),
        default=[],
        description=(
            "Folders (file:// URLs or absolute paths) whose files BATCH messages may name: the "
            "target reads and deletes only regular files under them (symlinks resolved). Empty "
            "(the default) refuses BATCH messages; set it to the tap's batch_config storage root."
        ),
    ),
    # singer-sdk's own setting, declared here for its default: bodies are bounded by bytes and
    # sent as they fill, so a drain only flushes a partial body and waits for it; the SDK's
    # 10,000 rows would mean ~3 MB requests and a wait every 10,000 records.
    _number(
        "batch_size_rows",
        whole=True,
        default=200_000,
        minimum=1,
        description="Records between sink drains (a drain sends the partial body).",
    ),
).to_dict()


def rejects_stream(lytics_stream: str) -> str:
    """The Lytics stream of ``lytics_stream``'s set-aside events (``max_rejected_records``).

    A stream already named ``*_rejects`` (the tap's ``activity_rejects`` goes to
    ``cordial_activity_rejects``) keeps its name: one place holds everything set aside.
    """
    return lytics_stream if lytics_stream.endswith("_rejects") else f"{lytics_stream}_rejects"


def setting(config: Mapping[str, Any], name: str) -> Any:
    """The setting's value, or its schema default when it is unset (missing or null), as the tap."""
    value = config.get(name)
    return CONFIG_SCHEMA["properties"][name].get("default") if value is None else value


def parse_number_settings(config: dict[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Turn number settings given as text into numbers, in place; list those that are not numbers.

    A setting is a number setting when its schema type lists ``integer`` or ``number`` beside
    ``string``. Ranges are left to the schema, which checks them after this.
    """
    problems: list[str] = []
    for name, prop in (schema.get("properties") or {}).items():
        value = config.get(name)
        types = prop.get("type")
        if not isinstance(value, str) or not isinstance(types, list) or "string" not in types:
            continue
        whole = "integer" in types
        if not whole and "number" not in types:
            continue
        number = _parse_number(value, whole=whole)
        if number is None:
            kind = "a whole number" if whole else "a number"
            problems.append(f"`{name}` must be {kind} (got {value!r}).")
        else:
            config[name] = number
    return problems


def connection_problems(config: dict[str, Any]) -> list[str]:
    """Check ``api_token`` and ``api_url``, stripping the token's surrounding whitespace in place.

    A token with a trailing newline (pasted from a file) would reach the HTTP library, whose
    error quotes the header; each problem names the setting, never its value.
    """
    problems: list[str] = []
    token = config.get("api_token")
    if isinstance(token, str):
        token = config["api_token"] = token.strip()
        if not token:
            problems.append("`api_token` is empty.")
        elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in token):
            problems.append(
                "`api_token` holds a control character (a line break or tab inside it?): it "
                "cannot be sent as the Authorization header."
            )
        elif any(ord(c) > 0xFF for c in token):
            problems.append(
                "`api_token` holds a character that cannot be sent in an HTTP header "
                "(not Latin-1): check that the whole token was copied, and nothing else."
            )
    url = config.get("api_url")
    if isinstance(url, str):
        try:
            netloc = urlsplit(url.strip()).netloc
        except ValueError:
            netloc = ""
        if "@" in netloc:
            problems.append(
                "`api_url` holds a user name or password (user:password@host): Lytics takes "
                "only api_token; remove them from the URL (e.g. https://api.lytics.io)."
            )
        elif "?" in url or "#" in url:
            # Old Lytics docs show ?access_token=...: every error line names api_url.
            problems.append(
                "`api_url` holds a query string or fragment (after '?' or '#'): the URL is "
                "named in every error line, and Lytics takes the token only from api_token; "
                "remove it from the URL (e.g. https://api.lytics.io)."
            )
    return problems


def _parse_number(text: str, *, whole: bool) -> float | None:
    """``text`` as an int, or (unless ``whole``) a finite float; None when it is not one."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        if whole:
            return None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def schema_problem(error: Any) -> str:
    """A JSON-schema validation error as one line naming the setting, never echoing a secret."""
    path = list(error.absolute_path)
    if path and path[0] in SECRET_SETTINGS:
        return f"`{path[0]}` must be a text value."
    if error.validator == "maximum" and path == ["max_request_bytes"]:
        return (
            f"`max_request_bytes` is {error.instance}; Lytics accepts at most "
            f"{HARD_MAX_REQUEST_BYTES} bytes per request."
        )
    if error.validator == "required":
        missing = str(error.message).split("'")[1] if "'" in error.message else error.message
        return f"`{missing}` is required."
    where = f"`{'.'.join(str(part) for part in path)}`: " if path else ""
    return f"{where}{error.message}."


def merged_streams(user: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The default stream mapping with the user's entries laid over it, by Singer stream name."""
    merged = copy.deepcopy(DEFAULT_STREAMS)
    for name, entry in (user or {}).items():
        merged[name] = dict(entry or {})
    return merged


def lytics_stream_problem(name: Any) -> str | None:
    r"""Why ``name`` cannot be a Lytics stream (one segment of ``/collect/json/{stream}``), or None.

    ``.`` and ``..`` would be resolved away from the path, ``/`` and ``\\`` would add segments,
    and control characters or surrounding spaces are a mistake, not a stream name.
    """
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "is a relative path segment, not a name"
    if "/" in name or "\\" in name:
        return "holds a path separator"
    if name != name.strip() or any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        return "holds control characters or surrounding spaces"
    return None


def input_settings_problems(config: Mapping[str, Any]) -> list[str]:
    """Problems of settings the schema cannot see: null numbers, stream names, field collisions.

    Also checks ``batch_file_roots`` (local folders only).
    """
    problems: list[str] = []
    for name, prop in CONFIG_SCHEMA["properties"].items():
        types = prop.get("type")
        if (
            name in config
            and config[name] is None
            and isinstance(types, list)
            and "string" in types
        ):
            problems.append(
                f"`{name}` is null; give a number or leave it out for the default "
                f"({prop.get('default')})."
            )
    streams = config.get("streams")
    if isinstance(streams, Mapping):
        merged = merged_streams({k: v for k, v in streams.items() if isinstance(v, Mapping)})
    else:
        merged = merged_streams(None)
    for singer_stream, entry in merged.items():
        lytics_stream = entry.get("lytics_stream") or singer_stream
        problem = lytics_stream_problem(lytics_stream)
        if problem:
            where = "lytics_stream" if entry.get("lytics_stream") else "(the Singer stream's name)"
            problems.append(
                f"`streams.{singer_stream}`: Lytics stream {lytics_stream!r} {where} {problem}; "
                "it must be one segment of /collect/json/{stream}."
            )
        problems.extend(_field_collisions(singer_stream, entry.get("fields")))
    roots = config.get("batch_file_roots")
    if isinstance(roots, list):
        for root in roots:
            if not isinstance(root, str) or not _is_local_folder(root):
                problems.append(
                    f"`batch_file_roots`: {root!r} is not a file:// URL or an absolute path."
                )
    return problems


def _field_collisions(singer_stream: str, fields: Any) -> list[str]:
    """Source fields of one stream mapped onto the same Lytics field (ids are lowercase)."""
    if not isinstance(fields, Mapping):
        return []
    by_id: dict[str, list[tuple[str, str]]] = {}
    for source, entry in fields.items():
        if isinstance(entry, str) or (isinstance(entry, Mapping) and "field" in entry):
            key = lytics_field_name(entry)
            by_id.setdefault(key.lower(), []).append((str(source), key))
    problems = []
    for field_id, sources in by_id.items():
        if len(sources) > 1:
            named = " and ".join(f"{source!r} -> {key!r}" for source, key in sources)
            problems.append(
                f"`streams.{singer_stream}.fields`: {named} map onto the same Lytics field "
                f"{field_id!r} (field ids are lowercase), so one value would be lost; map each "
                "source field onto its own Lytics field."
            )
    return problems


def _is_local_folder(root: str) -> bool:
    """Whether a ``batch_file_roots`` entry is a ``file://`` URL or an absolute path."""
    parts = urlsplit(root)
    if parts.scheme == "file":
        return parts.netloc in ("", "localhost") and parts.path.startswith("/")
    return not parts.scheme and root.startswith("/")
