"""target-lytics: a Singer target that uploads records into Lytics streams."""

from __future__ import annotations

__version__ = "0.1.0"
