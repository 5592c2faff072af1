"""The real transport against servers on 127.0.0.1: answers, failures, and the environment's proxy."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from mp_spark.transport import RequestsTransport, TransportError


class Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        Recorder.seen.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Recorder.seen.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_requests_go_through_the_environment_s_proxy(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", server)  # clusters often reach the internet only through one
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    transport = RequestsTransport()
    answer = transport.send("POST", "http://mixpanel.invalid/import?strict=1", b"x", {}, 5)
    assert answer.status == 200 and Recorder.seen == ["http://mixpanel.invalid/import?strict=1"]


def test_no_answer_is_a_transport_error_that_says_nothing_of_the_request() -> None:
    with pytest.raises(TransportError) as failure:
        RequestsTransport().send("POST", "http://127.0.0.1:9/import", b"x", {"Authorization": "Basic c2VjcmV0"}, 2)
    assert str(failure.value) == "ConnectionError"
