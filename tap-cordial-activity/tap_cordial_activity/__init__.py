"""Singer tap for Cordial contact activity (Contact Activity Export API, files read over SFTP)."""

from importlib.metadata import PackageNotFoundError, version

# The one version source is pyproject.toml's `version` (the installed package's metadata).
try:
    __version__ = version("tap-cordial-activity")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
