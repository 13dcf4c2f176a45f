"""The HTTP side of the status pages: GET and HEAD answered, every other method refused."""

from __future__ import annotations

import dataclasses
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from mobvibe.web import pages
from mobvibe.web.site import Reply, StatusSite, error, is_api

ALLOW = "GET, HEAD"
MAX_SKIPPED = 65536  # bytes of a refused request's body read before answering


class SiteHandler(BaseHTTPRequestHandler):
    """Serves a StatusSite (the class attribute `site`); answer() may add routes. HEAD is
    answered as GET without the body; the methods that would change something get 405
    with the methods allowed (a method no one knows stays 501, Not Implemented)."""

    site: StatusSite

    def version_string(self) -> str:
        return "mobvibe"  # no Python version for the curious

    def do_GET(self) -> None:
        self.send(self.answer(self.path))

    def do_HEAD(self) -> None:
        self.send(self.answer(self.path), body=False)

    def refuse(self) -> None:
        """405 Method Not Allowed: every address is read-only."""
        self._skip_body()
        api = is_api(urlsplit(self.path).path)
        reply = error(api, 405, f"{self.command} is not allowed here: the pages are read-only")
        self.send(dataclasses.replace(reply, headers=(("Allow", ALLOW),)))

    # http.server answers a method by its do_<METHOD>; a method not named here stays 501.
    do_POST = do_PUT = do_PATCH = do_DELETE = refuse  # noqa: N815
    do_OPTIONS = do_TRACE = do_CONNECT = refuse  # noqa: N815

    def _skip_body(self) -> None:
        # A request body left unread when the connection closes can reset it before the
        # client reads the answer; a large one is not worth reading: the answer is no.
        length = self.headers.get("Content-Length", "0")
        if length.isdigit() and 0 < int(length) <= MAX_SKIPPED:
            self.rfile.read(int(length))

    def answer(self, target: str) -> Reply:
        return self.site.answer(target)

    def send(self, reply: Reply, *, body: bool = True) -> None:
        """The reply with the headers every answer has; `body` False for HEAD."""
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if reply.content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", pages.CSP)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # scrapes and page refreshes every few seconds would drown the log
