"""A forward HTTP proxy on 127.0.0.1 for tests, the kind a cluster reaches the internet through.

Plain-HTTP requests arrive with an absolute URI and are forwarded; HTTPS arrives as CONNECT host:port
and is tunnelled byte for byte (the TLS session is the client's and the server's, end to end). It
forwards only to 127.0.0.1 (anything else gets 403) and records what passes: `forwarded` (the URI of
each plain-HTTP request) and `tunnels` (the host:port of each CONNECT). Standard library only.
"""

from __future__ import annotations

import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler
from socketserver import ThreadingTCPServer
from urllib.parse import urlsplit

# Headers about one connection, which a proxy must not pass on (RFC 9110, section 7.6.1).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "transfer-encoding", "upgrade"}


class ForwardProxy:
    """Serve on an ephemeral port of 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forwarded: list[str] = []
        self._tunnels: list[str] = []
        self.stopping = threading.Event()
        self._server = _ProxyServer(self)
        self._thread = threading.Thread(target=self._server.serve_forever, name="forward-proxy", daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # ends open tunnels
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def forwarded(self) -> list[str]:
        with self._lock:
            return list(self._forwarded)

    @property
    def tunnels(self) -> list[str]:
        with self._lock:
            return list(self._tunnels)

    def note_forwarded(self, uri: str) -> None:
        with self._lock:
            self._forwarded.append(uri)

    def note_tunnel(self, target: str) -> None:
        with self._lock:
            self._tunnels.append(target)


class _ProxyServer(ThreadingTCPServer):  # not HTTPServer, whose bind looks its own name up in DNS
    daemon_threads = True

    def __init__(self, proxy: ForwardProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client sends many requests over one proxy connection
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        if host != "127.0.0.1":
            self.send_error(403, "this test proxy only reaches 127.0.0.1")
            return
        self.server.proxy.note_tunnel(self.path)
        with socket.create_connection((host, int(port)), timeout=30) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self._relay(upstream)
        self.close_connection = True

    def _relay(self, upstream: socket.socket) -> None:
        """Copy bytes both ways until either side closes (or the proxy stops)."""
        ends = [self.connection, upstream]
        while not self.server.proxy.stopping.is_set():
            readable, _, _ = select.select(ends, [], [], 0.2)
            for end in readable:
                data = end.recv(65536)
                if not data:
                    return
                (upstream if end is self.connection else self.connection).sendall(data)

    def _forward(self) -> None:
        url = urlsplit(self.path)
        if url.scheme != "http" or url.hostname != "127.0.0.1":
            self.send_error(403, "this test proxy only forwards http://127.0.0.1 by absolute URI")
            return
        self.server.proxy.note_forwarded(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            upstream.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body, headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response_only(answer.status, answer.reason)  # the server's own Date and Server follow
        for name, value in answer.getheaders():
            if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _forward
