"""mobvibe-queue web: the supervisor's status pages, for a host that runs no supervisor."""

from __future__ import annotations

from http.server import ThreadingHTTPServer

import click

from mobvibe.cli.options import check_schema, friendly_errors, resolve_database
from mobvibe.errors import ConfigError
from mobvibe.sql import db
from mobvibe.web.connection import OneConnection
from mobvibe.web.handler import SiteHandler
from mobvibe.web.site import StatusSite

PORT_DEFAULT = 9400  # the supervisor's: one address to remember for the same pages


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    help="Address to listen on (the pages show prompts and outputs: keep it private).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=PORT_DEFAULT, help="Port.")
@click.pass_context
@friendly_errors
def web(ctx: click.Context, host: str, port: int) -> None:
    """Serve the status pages (/, /jobs, /jobs/ID) and their JSON API (/api/stats,
    /api/workers, /api/jobs, /api/jobs/ID), read-only, on one database connection;
    Ctrl-C stops."""
    url = resolve_database(ctx.obj)
    with db.connect(url, application_name="mobvibe-web") as conn:
        check_schema(conn)  # one line now, not a page that says it on every refresh
    database = OneConnection(url, "mobvibe-web")

    class Handler(SiteHandler):
        site = StatusSite(database)

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host"
        ) from None
    server.daemon_threads = True
    click.echo(f"status pages on http://{host}:{port}/ (Ctrl-C stops)", err=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        click.echo("", err=True)  # Ctrl-C is how one stops it: not an error
    finally:
        server.server_close()
        database.close()
