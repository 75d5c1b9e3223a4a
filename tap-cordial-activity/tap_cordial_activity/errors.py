"""The tap's user-facing error classes, and the one way they end a run."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import paramiko
from singer_sdk.exceptions import ConfigValidationError

#: SFTP errors that mean "the connection is gone" rather than "the file or request is wrong".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    EOFError,
    OSError,  # socket errors, ConnectionResetError, TimeoutError
    paramiko.SSHException,
    paramiko.SFTPError,  # a garbled SFTP packet: the session is out of step
)


class CordialError(Exception):
    """A Cordial call or export job that failed; the message says what and why."""

    def __init__(
        self, message: str, *, status: int | None = None, job_id: str | None = None
    ) -> None:
        """Keep the HTTP status and job id next to the message."""
        super().__init__(message)
        self.status = status
        self.job_id = job_id


class StoreError(Exception):
    """A problem with the export folder (SFTP or S3) the user can act on; says which and how."""


class SftpError(StoreError):
    """An SFTP problem the user can act on; the message says which and how."""


class S3Error(StoreError):
    """An S3 problem the user can act on: names the bucket and prefix and what to check."""


class HostKeyError(SftpError):
    """The server's host key is unknown or differs from the expected one."""


class ExportDataError(Exception):
    """The exported data is not what Cordial promises; names the file and the line."""

    def __init__(self, file_name: str, line: int | None, problem: str) -> None:
        """Build the message ``<file> line <n>: <problem>``."""
        where = f"{file_name} line {line}" if line is not None else file_name
        super().__init__(f"Bad export data in {where}: {problem}")
        self.file_name = file_name
        self.line = line
        self.problem = problem


class CutLineError(ExportDataError):
    """A file's last line has no newline and is no record: the file is cut, or still written.

    ``raw`` keeps the line, so once the file holds still it can be set aside as a bad record.
    """

    def __init__(self, file_name: str, line: int, problem: str, raw: bytes) -> None:
        """As :class:`ExportDataError`, with the line's raw bytes."""
        super().__init__(file_name, line, problem)
        self.raw = raw


class BadRecordLimitError(ExportDataError):
    """A bad record past ``max_bad_records``: the run fails (never retried by a re-read)."""


class ExportCountError(Exception):
    """A window's files hold fewer records than Cordial reports for its export job."""


class BatchStorageError(Exception):
    """A BATCH file cannot be written to ``batch_config.storage``; names the file."""


class StateError(Exception):
    """The incoming STATE cannot be right (a bookmark that is no date, or in the future)."""


#: How to repair a refused STATE, appended to each :class:`StateError` message.
STATE_WAY_OUT = (
    "Fix the state (`meltano state get <state_id>`, then `meltano state set --force <state_id> "
    "'<json>'`) or clear it (`meltano state clear <state_id>`; the next run starts at "
    "`start_date`); outside Meltano, fix or drop the --state file."
)


#: Errors whose message names the setting, file and line, or HTTP status and what to do: the CLI
#: prints them alone instead of under a traceback.
USER_ERRORS: tuple[type[Exception], ...] = (
    CordialError, StoreError, ExportDataError, ExportCountError, BatchStorageError, StateError
)


@contextlib.contextmanager
def user_errors_end_the_run(logger: logging.Logger) -> Iterator[None]:
    """End the run on a :data:`USER_ERRORS` error: its one-line message, then exit 1.

    The traceback (with the cause) goes to the DEBUG log only. A failed settings check prints
    each of its problems. An ``EOFError`` that escaped
    (a connection closed under a library call) is logged with its traceback: click would
    otherwise take it for the user's Ctrl-D and print a bare "Aborted!". Other errors propagate
    unchanged.
    """
    try:
        yield
    except ConfigValidationError as exc:
        # The settings check lists every problem, one line each (as singer-sdk's CLI does).
        for error in exc.errors:
            logger.error("%s", error)
        logger.error("Config validation failed")
        sys.exit(1)
    except USER_ERRORS as exc:
        logger.debug("The error below was raised here", exc_info=True)
        logger.error("%s", exc)
        sys.exit(1)
    except EOFError:
        logger.exception("A connection was closed unexpectedly (EOFError)")
        sys.exit(1)
