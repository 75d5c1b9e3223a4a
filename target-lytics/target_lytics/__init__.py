"""target-lytics: a Singer target that uploads records into Lytics streams."""

from __future__ import annotations

from importlib.metadata import version

__version__ = version("target-lytics")
