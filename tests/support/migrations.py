"""Databases migrated as earlier versions of the runner left them."""

from __future__ import annotations

from typing import Any

import psycopg

from mobvibe.sql import store
from mobvibe.sql.files import migrations

# The migrations that also defined functions, before the function files of sql/functions.
FROZEN = 9


def migrate_as_before(conn: psycopg.Connection[Any], up_to: int = FROZEN) -> None:
    """Migrations 0001 to `up_to` as the runner did before the function files: each in a
    transaction of its own, recorded in queue_migrations, and nothing else."""
    store.create_migrations_table(conn)
    for migration in migrations():
        if migration.version <= up_to:
            with conn.transaction():
                store.set_local(conn, "lock_timeout", "10s")
                store.apply_migration(
                    conn, migration.version, migration.name, migration.checksum, migration.sql
                )
