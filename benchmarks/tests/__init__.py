"""Tests of the benchmark harness itself (fast; no sandbox needed except the smoke test)."""
