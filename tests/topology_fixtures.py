"""pytest fixtures of the production-topology tests (loaded by conftest.py for every module).

Session scope, shared by test_topology_*.py: one PostgreSQL server, one moto S3 server and the two
workers' project copies, each copy installed once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_meltano import install_project_copy
from topology_services import MotoS3Server, PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (each test makes its own database)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def moto_s3(s3_server: MotoS3Server) -> MotoS3Server:
    """moto's S3 server for the session: the sandbox's ``s3_server`` (each test makes its own
    bucket)."""
    return s3_server


@pytest.fixture(scope="session")
def worker_projects(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Worker A's and worker B's project copies, each with its own `meltano install`."""
    return (
        install_project_copy(tmp_path_factory.mktemp("worker-a")),
        install_project_copy(tmp_path_factory.mktemp("worker-b")),
    )
