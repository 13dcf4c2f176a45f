"""Errors a user of the queue can meet, each with a message that names the fix."""

from __future__ import annotations


class QueueError(Exception):
    """Base of every error the queue raises on purpose."""

    exit_code = 1


class InvalidJobError(QueueError, ValueError):
    """A job (or a job id) that the queue refuses; nothing was written."""

    exit_code = 2


class NotFoundError(QueueError):
    """A job or a session that does not exist."""

    exit_code = 1


class ConfigError(QueueError):
    """A setting that cannot work (bad DATABASE_URL, 0 workers, ...)."""

    exit_code = 2


class DatabaseUnavailableError(QueueError):
    """The database cannot be reached or refused the connection."""

    exit_code = 1


class MigrationError(QueueError):
    """The schema in the database does not match the migrations shipped here."""

    exit_code = 1
