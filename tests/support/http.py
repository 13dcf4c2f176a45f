"""Requests to the HTTP endpoints a test started (the supervisor's, `mobvibe-queue web`)."""

from __future__ import annotations

import urllib.error
import urllib.request


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """An HTTP request to 127.0.0.1:port: status (0: no answer), headers, body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:  # noqa: S310 - http, ours
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except OSError:
        return 0, {}, b""  # nothing listens (yet)


def get_text(port: int, path: str) -> tuple[int, str]:
    """GET `path`: its status (0: no answer) and its body as text."""
    status, _, body = get(port, path)
    return status, body.decode()
