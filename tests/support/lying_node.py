"""A JSON-RPC proxy that forwards to a real node and lies where a test tells it to.

Used to show that medmeter refuses what a dishonest or broken node serves, rather than settling on it:
`LyingNode(upstream, lie)` listens on a free loopback port; `lie(method, params, result)` may return a
changed result (or the same one) for every call, batches included.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Lie = Callable[[str, list[Any], Any], Any]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = urllib.request.Request(
            self.server.upstream, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        calls = json.loads(body)
        if isinstance(calls, list):
            answer = [self._lie(call, reply) for call, reply in zip(calls, answer, strict=True)]
        else:
            answer = self._lie(calls, answer)
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _lie(self, call: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
        if "result" in reply:
            reply = dict(reply, result=self.server.lie(call["method"], call.get("params", []), reply["result"]))
        return reply

    def log_message(self, *args: Any) -> None:
        """Quiet: the test's output is the assertions."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, lie: Lie) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = upstream
        self.lie = lie


@contextmanager
def lying_node(upstream: str, lie: Lie) -> Iterator[str]:
    """The proxy's URL while the context is open."""
    server = _Server(upstream, lie)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def on_get_logs(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Lie:
    """A lie that rewrites every non-empty eth_getLogs answer with `change` and passes the rest through."""

    def lie(method: str, _params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs" and isinstance(result, list) and result:
            return change([dict(log) for log in result])
        return result

    return lie
