"""The target's user-facing error classes, and the one way they end a run."""

from __future__ import annotations

import contextlib
import logging
import sys
import traceback
from collections.abc import Iterator

from singer_sdk.exceptions import ConfigValidationError, InvalidRecord, MappingError


class LyticsError(RuntimeError):
    """An upload failed in a way that must end the run (no later STATE is emitted)."""


class RejectedEventsError(LyticsError):
    """Lytics answered 2xx but refused some events of the body (``rejected_count`` > 0)."""

    def __init__(self, message: str, *, accepted: int, rejected: int) -> None:
        """Keep the counts Lytics reported, for the run's summary."""
        super().__init__(message)
        self.accepted = accepted
        self.rejected = rejected


class ValueConversionError(ValueError):
    """A value cannot be converted to what its schema promises."""


class BatchFileError(ValueError):
    """A BATCH file cannot be read, or one of its records fails; names the file and line."""


class InputError(ValueError):
    """A message of the input that the target cannot take; the reader adds the line number."""


class RunRecordError(Exception):
    """A record of a run (:mod:`target_lytics.fastpath`) failed: the error and its index."""

    def __init__(self, error: Exception, index: int) -> None:
        """Keep the record's error and its place in the run."""
        super().__init__(str(error))
        self.error = error
        self.index = index


#: How the note the reader adds to an error raised by an input line begins.
INPUT_LINE_NOTE = "Input line "


def input_line_note(error: BaseException) -> str | None:
    """The reader's note on an error raised by an input line: the line, stream and problem."""
    notes = getattr(error, "__notes__", None) or ()
    return next((n for n in notes if isinstance(n, str) and n.startswith(INPUT_LINE_NOTE)), None)


#: Bytes of a bad input line quoted in an error message at most (a bad line may be megabytes).
QUOTE_BYTES = 200


def quote_line(line: bytes | str) -> str:
    """The start of a bad input line, for a message: at most :data:`QUOTE_BYTES` bytes, as repr."""
    data = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else bytes(line)
    data = data.rstrip(b"\r\n")
    if len(data) <= QUOTE_BYTES:
        return repr(data.decode("utf-8", "backslashreplace"))
    head = data[:QUOTE_BYTES].decode("utf-8", "backslashreplace")
    return f"{head!r} ... ({len(data)} bytes)"


#: Errors whose message says what is wrong and what to do (the HTTP status and the fix, or the
#: stream and field): the CLI prints them alone instead of under a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    LyticsError,
    InvalidRecord,
    ValueConversionError,
    BatchFileError,
    ConfigValidationError,
    InputError,
    # A bad stream_maps expression found when the target starts (at SCHEMA: an input line's).
    MappingError,
)


@contextlib.contextmanager
def user_errors_end_the_run(logger: logging.Logger) -> Iterator[None]:
    """End the run on a :data:`USER_ERRORS` error, or any error of an input line: one line, exit 1.

    An error raised by an input line carries the reader's note (:func:`input_line_note`: the
    line number, its stream and what is expected), which is the line. The error and its causes,
    each with where it was raised, go to the DEBUG log only (as lines, not a traceback); other
    errors propagate unchanged. A settings error lists each problem, as singer-sdk's own command
    does (one problem is the only line; several get a count after them).
    """
    try:
        yield
    except Exception as exc:
        note = input_line_note(exc)
        if note is None and not isinstance(exc, USER_ERRORS):
            raise
        for line in _error_chain(exc):
            logger.debug("Error chain: %s", line)
        if note is not None:
            logger.error("%s", note)
            sys.exit(1)
        problems = exc.errors if isinstance(exc, ConfigValidationError) else []
        for problem in problems:
            logger.error("%s", problem)
        if len(problems) != 1:
            # One problem is the one line; several get a count after them.
            logger.error("%s", f"{exc} ({len(problems)} problems)" if problems else exc)
        sys.exit(1)


def _error_chain(error: BaseException) -> Iterator[str]:
    """One line per error in the chain (the error, then its causes): type, message, where."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = traceback.extract_tb(current.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        yield f"{type(current).__name__}: {current}{where}"
        current = current.__cause__ or current.__context__
