"""Shared pytest setup: the sandbox fixtures and the production-topology servers."""

pytest_plugins = ["sandbox.pytest_plugin", "topology_fixtures"]
