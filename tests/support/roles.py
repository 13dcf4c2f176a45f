"""Login roles made for a test: cluster-wide, so with random names, and dropped after."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
from psycopg import conninfo, sql


class LoginRoles:
    """Login roles made for a test, dropped by drop()."""

    def __init__(self, admin: psycopg.Connection[Any], url: str) -> None:
        self.admin, self.url, self.made = admin, url, list[str]()

    def make(self, *member_of: str, inherit: bool = True, prefix: str = "mobvibe_test") -> str:
        """A login role in the groups `member_of`; its URL. NOINHERIT: it has the groups'
        rights only after SET ROLE, as Supabase's API roles take theirs."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN {}").format(
                sql.Identifier(name), sql.SQL("INHERIT" if inherit else "NOINHERIT")
            )
        )
        self.made.append(name)
        for group in member_of:
            self.admin.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
            )
        return conninfo.make_conninfo(self.url, user=name)

    def drop(self) -> None:
        for name in self.made:
            self.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [name],
            )
            self.admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            self.admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        self.made.clear()
