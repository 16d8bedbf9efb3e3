"""Serving a test's request handler on loopback in a background thread: what every local stand-in needs."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_in_thread(handler: type[BaseHTTPRequestHandler], name: str, port: int = 0) -> ThreadingHTTPServer:
    """Start serving ``handler`` on 127.0.0.1 (``port`` 0: a free one); ``server_address[1]`` is the port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def respond(handler: BaseHTTPRequestHandler, status: int, payload: bytes,
            content_type: str = "application/json") -> None:
    """Send one whole response: status, type and length headers, body."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def stop_serving(server: ThreadingHTTPServer | None) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
