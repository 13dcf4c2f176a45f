"""MobVibe job queue: a PostgreSQL-backed queue of coding jobs and its supervisor."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mobvibe-supervisor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
