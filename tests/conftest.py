"""Shared pytest setup: the sandbox fixtures (sftp_server, cordial, lytics, sandbox)."""

pytest_plugins = ["sandbox.pytest_plugin"]
