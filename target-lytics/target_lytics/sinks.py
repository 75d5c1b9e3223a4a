"""LyticsSink: maps records, builds size-bounded JSON array bodies and uploads them.

Each record is mapped then serialized once with orjson into the body being built. A body is
``[`` + events joined by ``,`` + ``]`` and is sent before adding an event would take it past
``max_request_bytes``. Full bodies go to the sink's :class:`~target_lytics.uploads.UploadPool`:
up to ``max_concurrent_uploads`` in flight while the next one is built, so memory stays at about
that many bodies plus one. A drain (singer-sdk's ``process_batch``) only sends the partial body;
it does not wait. STATE waits for Lytics instead through the sink's
:class:`~target_lytics.uploads.RecordLedger` (see :mod:`target_lytics.checkpoints`), and
:meth:`LyticsSink.wait_for_uploads` waits at the end of the input, raising the first failure.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
import threading
import time
import typing as t
from pathlib import Path

import fastjsonschema
import orjson
from singer_sdk.exceptions import InvalidJSONSchema, InvalidRecord
from singer_sdk.sinks import Sink
from typing_extensions import override

from target_lytics.batch_files import (
    BatchLines,
    check_compression,
    checked_batch_file,
    jsonl_line_chunks,
)
from target_lytics.client import ShortCountError
from target_lytics.errors import InputError, LyticsError, RejectedEventsError
from target_lytics.mapping import RecordMapper, StreamMapping, json_default
from target_lytics.rejects import (
    ARRAY_OF_OBJECTS,
    MAX_EVENT_BYTES_IN_BATCH,
    MAX_REJECT_EVENT_BYTES,
    Refused,
    RejectBudget,
    RejectWriter,
    body_events,
    fit_reject_event,
    is_rejects_stream,
    limit_hint,
    unsendable_reason,
)
from target_lytics.sdk_private import (
    BaseJSONSchemaValidator,
    JSONSchemaValidator,
    check_key_properties,
    record_validator,
    remove_sdc_metadata,
)
from target_lytics.settings import lytics_stream_problem, setting
from target_lytics.typed_records import TypedRecordEncoder, decode_record
from target_lytics.uploads import Body, UploadPool

if t.TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import msgspec
    from singer_sdk import Target

    from target_lytics.checkpoints import StateCheckpoints
    from target_lytics.client import AdaptiveLimit, LyticsClient
    from target_lytics.progress import UploadProgress
    from target_lytics.sdk_private import BaseBatchFileEncoding

_OPEN = b"["
_SEPARATOR = b","
_CLOSE = b"]"

#: singer-sdk's record metadata columns, removed from records when add_record_metadata is off.
_SDC_COLUMNS = frozenset(
    {
        "_sdc_extracted_at",
        "_sdc_received_at",
        "_sdc_batched_at",
        "_sdc_deleted_at",
        "_sdc_sequence",
        "_sdc_table_version",
        "_sdc_sync_started_at",
    }
)


@dataclasses.dataclass(frozen=True)
class SinkContext:
    """What a sink needs from the target, built once by ``target.py`` (the sink never sees it)."""

    #: The one Lytics client (one keep-alive session) shared by every sink's upload threads.
    client: LyticsClient
    #: STATE checkpoints: each sink's ledger comes from here.
    checkpoints: StateCheckpoints
    #: Counts for the progress lines and the summary.
    progress: UploadProgress
    max_request_bytes: int
    max_concurrent_uploads: int
    #: Real paths of the folders BATCH files may be read from.
    batch_file_roots: Sequence[str]
    #: A Singer stream's resolved mapping.
    stream_mapping: Callable[[str], StreamMapping]
    #: Called (from an upload thread) when an upload failed for good.
    upload_failed: Callable[[], None]
    #: The run's max_rejected_records, shared by every sink.
    reject_budget: RejectBudget = dataclasses.field(default_factory=lambda: RejectBudget(0))


class RecordSource(t.Protocol):
    """Where a sequence of raw records came from: which checks they take, how an error names it."""

    #: True: singer-sdk's RECORD checks (validation per fail_on_record_validation_exception,
    #: ``_sdc_*`` removal, key properties); False: a BATCH file's (validation, always fatal).
    @property
    def sdk_checks(self) -> bool:
        """Whether the records take singer-sdk's RECORD checks."""
        ...

    def error(self, error: Exception, index: int) -> Exception:
        """The error to raise for the record at ``index`` (0-based) that failed with ``error``."""
        ...


class FastJSONSchemaValidator(BaseJSONSchemaValidator):
    """Validates records with a fastjsonschema-compiled function (much faster than jsonschema).

    Like the SDK's default validator, string formats are not checked here: date-times are parsed
    (and rejected with the field's name when invalid) by the mapping.
    """

    @override
    def __init__(self, schema: dict[str, t.Any], stream_name: str) -> None:
        """Compile ``schema``; raise :class:`InvalidJSONSchema` when it cannot be compiled."""
        super().__init__(schema)
        self.stream_name = stream_name
        try:
            self._validate = fastjsonschema.compile(schema, use_formats=False)
        except (fastjsonschema.JsonSchemaDefinitionException, re.error) as exc:
            msg = f"Schema Validation Error for stream '{stream_name}': {exc}"
            raise InvalidJSONSchema(msg) from exc

    @override
    def validate(self, record: dict[str, t.Any]) -> None:
        """Raise :class:`InvalidRecord` naming the stream and the failing field."""
        try:
            self._validate(record)
        except fastjsonschema.JsonSchemaValueException as exc:
            path = exc.name.replace("data", "record", 1) if exc.name else "record"
            msg = (
                f"Record Message Validation Error in stream '{self.stream_name}': "
                f"{exc.message.replace('data', 'record', 1)} (at {path}, rule {exc.rule!r})"
            )
            raise InvalidRecord(msg, record) from exc


class QuietValidationFailures(logging.Filter):
    """singer-sdk's record loop logs a failing record with a traceback before raising the error.

    When the error ends the run, its one line says it (see ``errors.user_errors_end_the_run``): the
    log record is dropped. When the run goes on (``fail_on_record_validation_exception`` off), it
    becomes one warning line. Runs only when singer-sdk logs, so the good path pays nothing.
    """

    def __init__(self, *, fails: bool) -> None:
        """``fails``: a failing record ends the run."""
        super().__init__()
        self.fails = fails

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        """Drop or shorten singer-sdk's "Record validation failed" record."""
        if record.msg != "Record validation failed" or not record.exc_info:
            return True
        if self.fails:
            return False
        error = record.exc_info[1]
        record.msg = "Record validation failed: %s"
        record.args = (getattr(error, "error_message", str(error)),)
        record.exc_info = None
        return True


class BodyBuilder:
    """Accumulates serialized events into a JSON array of at most ``max_bytes`` bytes."""

    def __init__(self, max_bytes: int) -> None:
        """Start empty."""
        self.max_bytes = max_bytes
        self._buffer = bytearray(_OPEN)
        self.count = 0

    @property
    def size(self) -> int:
        """Size of the body if it were closed now."""
        return len(self._buffer) + len(_CLOSE)

    def add(self, event: bytes) -> bool:
        """Append one serialized event if it fits; False (nothing added) when it does not."""
        if self.count:
            # Separator and closing bracket: 2 bytes beyond the buffer and the event.
            if len(self._buffer) + len(event) + 2 > self.max_bytes:
                return False
            self._buffer += _SEPARATOR
        elif len(event) + 2 > self.max_bytes:
            return False
        self._buffer += event
        self.count += 1
        return True

    def take(self) -> tuple[bytes, int]:
        """Return the closed body and its event count, and start a new one."""
        self._buffer += _CLOSE
        body, count = bytes(self._buffer), self.count
        self._buffer = bytearray(_OPEN)
        self.count = 0
        return body, count


class LyticsSink(Sink):
    """Uploads one Singer stream into one Lytics stream."""

    # Rows between the SDK's sink drains when batch_size_rows is not set (see the settings).
    MAX_SIZE_DEFAULT = setting({}, "batch_size_rows")

    @override
    def __init__(
        self,
        target: Target,
        stream_name: str,
        schema: dict,
        key_properties: t.Sequence[str] | None,
    ) -> None:
        """Resolve this stream's mapping and compile the record mapper.

        ``target`` must carry a :class:`SinkContext` as ``sink_context``.
        """
        context = getattr(target, "sink_context", None)
        if not isinstance(context, SinkContext):
            msg = f"{type(target).__name__} has no sink_context (a SinkContext) for LyticsSink"
            raise TypeError(msg)
        self.context = context
        super().__init__(target, stream_name, schema, key_properties)
        self.stream_mapping: StreamMapping = context.stream_mapping(stream_name)
        problem = lytics_stream_problem(self.stream_mapping.lytics_stream)
        if problem:
            raise InputError(
                f"stream {stream_name!r} would go to Lytics stream "
                f"{self.stream_mapping.lytics_stream!r}, which {problem}; rename the stream or "
                f"set streams.{stream_name}.lytics_stream"
            )
        if not any(isinstance(f, QuietValidationFailures) for f in self.logger.filters):
            fails = bool(self.fail_on_record_validation_exception)
            self.logger.addFilter(QuietValidationFailures(fails=fails))
        self.mapper = RecordMapper(
            stream_name=stream_name,
            schema=self.schema,
            mapping=self.stream_mapping,
            include_unmapped_fields=bool(setting(self.config, "include_unmapped_fields")),
            logger=self.logger,
        )
        self._refuse_unmapped_collisions()
        #: Records of this stream decoded straight into events (None: the general way only).
        self.typed_encoder = TypedRecordEncoder.for_stream(
            self.schema, self.key_properties, self.mapper
        )
        #: Set-aside records (the tap's activity_rejects): their raw text is cut to fit Lytics.
        self.fits_raw = is_rejects_stream(stream_name, self.stream_mapping.lytics_stream)
        self.dry_run = bool(setting(self.config, "dry_run"))
        self.delete_batch_files = bool(setting(self.config, "delete_batch_files"))
        self.body = BodyBuilder(context.max_request_bytes)
        self.counts = context.progress.add_stream(stream_name, self.stream_mapping.lytics_stream)
        self.ledger = context.checkpoints.new_ledger()
        fields = self.stream_mapping.fields or {}
        self.rejects = RejectWriter(
            client=context.client,
            budget=context.reject_budget,
            singer_stream=stream_name,
            lytics_stream=self.stream_mapping.lytics_stream,
            timestamp_field=self.stream_mapping.timestamp_field,
            key_fields={key: fields.get(key, key) for key in self.key_properties or ()},
            dry_run=self.dry_run,
        )
        #: Guards counts.set_aside (upload threads set events aside too).
        self._set_aside_lock = threading.Lock()
        #: Number of the first record in the body being built (records count from 0).
        self._body_first = 0
        #: When a partial body was last sent (monotonic seconds).
        self.flushed_at = time.monotonic()
        self.uploads = UploadPool(
            client=context.client,
            size=context.max_concurrent_uploads,
            upload=self._upload,
            ledger=self.ledger,
            counts=self.counts,
            name=stream_name,
            on_error=context.upload_failed,
        )

    def _refuse_unmapped_collisions(self) -> None:
        """With include_unmapped_fields, an unmapped field named like a mapped Lytics field.

        Its value would be dropped for the mapped one's (or the other way round) without a word.

        Raises:
            InputError: Names the stream, the field and the mapping it collides with.
        """
        fields = self.stream_mapping.fields
        if not fields or not setting(self.config, "include_unmapped_fields"):
            return
        targets = {target.lower(): source for source, target in fields.items()}
        for name in self.schema.get("properties") or {}:
            source = targets.get(name.lower())
            if name not in fields and source is not None:
                raise InputError(
                    f"stream '{self.stream_name}': field {name!r} is not mapped, so "
                    f"include_unmapped_fields sends it as {name!r}, the Lytics field that "
                    f"{source!r} is mapped onto (field ids are lowercase); map {name!r} to "
                    "another field or turn include_unmapped_fields off"
                )

    @property
    def client(self) -> LyticsClient:
        """The target's shared client (one keep-alive session)."""
        return self.context.client

    @override
    def get_validator(self) -> BaseJSONSchemaValidator | None:
        """A fastjsonschema validator, unless ``validate_records`` is false.

        A schema fastjsonschema cannot compile (a construct it does not support) falls back to
        singer-sdk's jsonschema validator, which also rejects schemas that are truly invalid.
        """
        if not self.validate_schema:
            return None
        try:
            return FastJSONSchemaValidator(self.schema, self.stream_name)
        except InvalidJSONSchema as exc:
            self.logger.warning(
                "%s; validating stream '%s' with jsonschema instead (slower)", exc, self.stream_name
            )
            return JSONSchemaValidator(
                self.schema, validate_formats=self.validate_field_string_format
            )

    @override
    def process_record(self, record: dict, context: dict) -> None:
        """Map, serialize and buffer one record (sending the body first when it is full)."""
        self.add_event(orjson.dumps(self.mapper.map(record), default=json_default))

    def add_raws(self, raws: Sequence[bytes | msgspec.Raw], source: RecordSource) -> None:
        """The one way in for raw records (RECORD runs, BATCH lines): checked, mapped, buffered.

        The typed encoder turns a record it accepts into its event directly; any other record is
        decoded (floats as Decimal) and takes the checks ``source`` asks for, then
        :meth:`process_record`. A record that fails raises ``source.error`` (which names its
        place in the input); an upload's :class:`LyticsError` passes as it is.
        """
        add = self._add_sdk_checked if source.sdk_checks else self._add_batch_checked
        typed = self.typed_encoder
        raw: bytes | msgspec.Raw | None = None
        try:
            if typed is None:
                for raw in raws:
                    add(decode_record(raw))
            else:
                encode, add_event = typed.encode, self.add_event
                for raw in raws:
                    event = encode(raw)
                    if event is None:
                        add(decode_record(raw))
                    else:
                        add_event(event)
        except LyticsError:
            raise
        except Exception as exc:
            # The error path only: which record failed, for its place in the input.
            index = next((i for i, item in enumerate(raws) if item is raw), 0)
            error = source.error(exc, index)
            if error is exc:
                raise
            raise error from exc

    def _add_sdk_checked(self, record: t.Any) -> None:
        """singer-sdk's per-record checks (without its record copy and transforms), then map."""
        if not isinstance(record, dict):
            raise InvalidRecord(
                f"A RECORD of stream '{self.stream_name}' holds a {type(record).__name__}, "
                "not a JSON object",
                record,
            )
        if not _SDC_COLUMNS.isdisjoint(record):
            remove_sdc_metadata(self, record)
        validator = record_validator(self)
        if validator is not None:
            try:
                validator.validate(record)
            except InvalidRecord as exc:
                # The error ends the run in one line (no traceback); a warning when it does not.
                if self.fail_on_record_validation_exception:
                    raise
                self.logger.warning("Record validation failed: %s", exc.error_message)
        for key in self.key_properties:
            if key not in record:
                check_key_properties(self, record)  # raises the SDK's error
        self.process_record(record, {})

    def _add_batch_checked(self, record: t.Any) -> None:
        """Validate a BATCH record (as singer-sdk's BATCH path), then map."""
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise InvalidRecord(f"the record is a {kind}, not a JSON object", record)
        validator = self.batch_validator
        if validator is not None:
            validator.validate(record)
        self.process_record(record, {})

    def add_event(self, event: bytes) -> None:
        """Buffer one serialized event (sending the body first when it is full).

        An event Lytics cannot take is never sent: with max_rejected_records it is set aside,
        with 0 the run ends here, before its body goes out (sent, the body's other events would
        be stored, and stored again by each rerun of the same records). A set-aside record's
        ``raw`` text is cut first, so it fits (:func:`~target_lytics.rejects.fit_reject_event`).
        """
        if self.fits_raw and len(event) > MAX_REJECT_EVENT_BYTES:
            event = fit_reject_event(event)
        if len(event) > MAX_EVENT_BYTES_IN_BATCH or ARRAY_OF_OBJECTS.search(event) is not None:
            reason = unsendable_reason(event)
            if reason is not None:
                self._set_aside_unsent(event, reason)
                return
        if not self.body.add(event):
            if self.body.count:
                self.send_body()
            # Too large even for an empty body: before, an event arriving after others was
            # dropped here without a word (the second add's answer went unread).
            if not self.body.add(event):
                raise LyticsError(
                    f"One event of stream '{self.stream_name}' is {len(event)} bytes, more than "
                    f"max_request_bytes ({self.body.max_bytes}) allows; raise max_request_bytes "
                    "(at most 10,000,000) or leave large fields out of the mapping."
                )
        self.ledger.received += 1
        self.counts.received += 1

    def _set_aside_unsent(self, event: bytes, reason: str) -> None:
        """Set aside an event before sending it; it takes no place in the ledger.

        Its reject event is accepted before this returns, so a STATE after it covers it.

        Raises:
            LyticsError: max_rejected_records does not allow it (0, the default: the message
                names the setting), or the reject event's upload failed.
        """
        key = self.rejects.reject_event(Refused(event, reason), "")["key"]
        cause = f"One event of stream '{self.stream_name}' (key {key}) was not sent: {reason}."
        try:
            self.rejects.set_aside([Refused(event, reason)], cause)
        except LyticsError:
            self.context.upload_failed()
            raise
        self.counts.received += 1
        with self._set_aside_lock:
            self.counts.set_aside += 1
        self.logger.warning(
            "%s Set aside into Lytics stream '%s' (%s).",
            cause,
            self.rejects.rejects_stream,
            limit_hint_short(self.rejects),
        )

    @override
    def process_batch_files(self, encoding: BaseBatchFileEncoding, files: t.Sequence[str]) -> None:
        """Stream JSON Lines files line by line (:mod:`target_lytics.batch_files`).

        Every file is checked first: a regular file under ``batch_file_roots``. Other formats
        (parquet) take singer-sdk's way: a whole file's records to
        :meth:`process_batch`.
        """
        roots = self.context.batch_file_roots
        checked = [(url, checked_batch_file(url, roots, self.stream_name)) for url in files]
        if encoding.format != "jsonl":
            super().process_batch_files(encoding, [Path(path).as_uri() for _, path in checked])
            return
        check_compression(encoding.compression, self.stream_name)
        counter = self.record_counter_metric
        for url, path in checked:
            for first_line, lines in jsonl_line_chunks(
                url, path, encoding.compression, self.stream_name
            ):
                self.add_raws(lines, BatchLines(url, self.stream_name, first_line))
                counter.increment(len(lines))
            self.send_body()
            if self.delete_batch_files:
                # The tap's STATE, not the file, is what a failed run resumes from.
                os.unlink(path)

    @override
    def process_batch(self, context: dict) -> None:
        """Send the partial body; do not wait (STATE waits for Lytics through the ledger).

        singer-sdk's BATCH path for formats other than JSON Lines (parquet) arrives here with a
        file's records in ``context["records"]``: they are validated and uploaded like RECORD
        messages.
        """
        for record in context.get("records") or ():
            self._add_batch_checked(record)
        self.send_body()

    @functools.cached_property
    def batch_validator(self) -> BaseJSONSchemaValidator | None:
        """The validator of this stream's schema for BATCH records, compiled once."""
        return self.get_validator()

    def send_body(self) -> None:
        """Hand the body being built (if any) to the upload pool; raise an earlier failure."""
        if not self.body.count:
            self.uploads.raise_error()
            return
        data, count = self.body.take()
        body = Body(data, self._body_first, self._body_first + count)
        self._body_first = body.end
        self.flushed_at = time.monotonic()
        self.uploads.submit(body)

    def wait_for_uploads(self) -> None:
        """Send the partial body and wait until Lytics accepted everything; raise a failure."""
        self.send_body()
        self.uploads.wait()

    @property
    def uploads_in_flight(self) -> int:
        """Bodies of this sink sent and not yet answered."""
        return self.counts.in_flight

    @override
    def clean_up(self) -> None:
        """Wait for the last uploads, stop the upload threads and report."""
        self.wait_for_uploads()
        self.uploads.close()
        self.logger.info(
            "Lytics accepted %d events in %d requests into stream '%s'%s",
            self.counts.accepted,
            self.counts.requests,
            self.stream_mapping.lytics_stream,
            " (dry run: nothing stored)" if self.dry_run else "",
        )
        super().clean_up()

    def _upload(self, body: Body, limit: AdaptiveLimit) -> tuple[int, int]:
        """Upload one body (upload thread): (events accepted, requests sent); raise LyticsError."""
        try:
            result = self.client.upload(
                self.stream_mapping.lytics_stream,
                body.data,
                timestamp_field=self.stream_mapping.timestamp_field,
                dry_run=self.dry_run,
                event_count=body.count,
                limit=limit,
            )
        except RejectedEventsError as exc:
            return self._set_aside_refused(body, exc), 1
        if result.message_count and result.message_count != body.count:
            self.logger.warning(
                "Lytics reported %d events for a request of %d to stream '%s'",
                result.message_count,
                body.count,
                self.stream_mapping.lytics_stream,
            )
        self.logger.debug(
            "Uploaded %d events (%d bytes) to Lytics stream '%s'",
            body.count,
            len(body.data),
            self.stream_mapping.lytics_stream,
        )
        return body.count, result.attempts

    def _set_aside_refused(self, body: Body, error: RejectedEventsError) -> int:
        """Lytics refused events of ``body`` (stored the others): set them aside, or raise.

        Which ones it refused it does not say: dry runs of halves find them
        (:meth:`RejectWriter.find_refused`), so no event is stored twice. Returns the events
        accepted; the body then counts as done (its refused events are in the rejects stream).

        Raises:
            RejectedEventsError: max_rejected_records is 0 or too low (the message names it), the
                dry runs did not find as many refused events as Lytics reported, or the reject
                events' upload failed.
        """
        lytics_stream = self.stream_mapping.lytics_stream

        def failed(message: str) -> RejectedEventsError:
            return RejectedEventsError(message, accepted=error.accepted, rejected=error.rejected)

        if not self.rejects.enabled:
            raise failed(f"{error} {limit_hint(0, lytics_stream)}") from error
        events = body_events(body.data)
        positions = self.rejects.find_refused(events, error.rejected)
        if len(positions) != error.rejected:
            raise failed(
                f"{error} Dry runs of parts of the body found {len(positions)} refused events, "
                f"not {error.rejected}, so which ones were lost cannot be told and none is set "
                "aside."
            ) from error
        if isinstance(error, ShortCountError):
            reason = "Lytics left the event out of message_count (it did not say why)"
        else:
            reason = "Lytics refused the event (rejected_count) without saying why"
        try:
            self.rejects.set_aside([Refused(events[p], reason) for p in positions], str(error))
        except LyticsError as exc:
            raise failed(str(exc)) from exc
        with self._set_aside_lock:
            self.counts.set_aside += len(positions)
        self.logger.warning(
            "Lytics refused %d of %d events sent to stream '%s'; found them with %d dry-run "
            "requests (nothing stored twice) and set them aside into Lytics stream '%s' (%s).",
            len(positions),
            body.count,
            lytics_stream,
            self.rejects.probes,
            self.rejects.rejects_stream,
            limit_hint_short(self.rejects),
        )
        return error.accepted


def limit_hint_short(rejects: RejectWriter) -> str:
    """How much of max_rejected_records this run has used."""
    budget = rejects.budget
    return f"{budget.used} of max_rejected_records {budget.limit} used"
