"""target-lytics: a Singer target that uploads records into Lytics streams."""

from importlib.metadata import PackageNotFoundError, version

# The one version source is pyproject.toml's `version` (the installed package's metadata).
try:
    __version__ = version("target-lytics")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
