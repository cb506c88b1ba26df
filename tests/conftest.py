"""Session-wide test set-up."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


def pytest_sessionstart() -> None:
    """Give Ctrl-C its normal meaning in this process and in every process the tests start.

    A shell that starts a job in the background (``cmd &`` in a script, ``nohup``) sets SIGINT
    to *ignored*, and an ignored signal stays ignored across ``exec``: Python then never raises
    KeyboardInterrupt, and the tests that check what perwatt does on Ctrl-C (keep partial
    results, restore clocks) would fail for a reason that is not perwatt's. A handled signal is
    reset to its default on ``exec``, so installing Python's handler here fixes the children too.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------ one loopback HTTP server
#: An app answers one request: (method, path below its mount point, body) → (status, JSON).
App = Callable[[str, str, bytes], tuple[int, Any]]


class Loopback:
    """One HTTP server on 127.0.0.1 for the whole test session (as httpx's tests serve one).

    Each test mounts its app under a fresh prefix (:meth:`mount` returns the base URL), so
    fakes of OpenAI servers or exporters need no server of their own. A test that needs a
    server to die mid-run starts its own.
    """

    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        loopback = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, method: str) -> None:
                prefix, _, rest = self.path.lstrip("/").partition("/")
                app = loopback.apps.get(prefix)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, obj = (
                    (404, {"error": "no such app"})
                    if app is None
                    else app(method, "/" + rest, body)
                )
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._answer("GET")

            def do_POST(self) -> None:
                self._answer("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def mount(self, app: App) -> str:
        """Serve ``app`` under a new prefix; returns its base URL (``http://127.0.0.1:P/mN``)."""
        prefix = f"m{len(self.apps)}"
        self.apps[prefix] = app
        return f"http://127.0.0.1:{self.server.server_address[1]}/{prefix}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="session")
def loopback() -> Iterator[Loopback]:
    """The session's loopback HTTP server (:class:`Loopback`)."""
    server = Loopback()
    yield server
    server.close()
