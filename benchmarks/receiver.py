"""A fast /import receiver for benchmarks: gunzips and counts lines, never parses JSON.

Runs in its own process (`python benchmarks/receiver.py PORT`) so it does not share the job's GIL.
Modes, set with POST /configure: `latency_s` added to every answer, and `admit_events_per_second`
(a token bucket holding one second of events; a batch that does not fit is answered 429).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

try:  # the receiver shares the job's 2 cores: ISA-L's inflate costs it about a third of zlib's
    from isal import isal_zlib as zlib
except ImportError:
    import zlib

NEWLINE = ord("\n")
OK_BODY = '{{"code":200,"num_records_imported":{},"status":"OK"}}'
RATE_LIMITED = b'{"code":429,"error":"Project exceeded rate limits.","status":"Too Many Requests"}'


class State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.configure({})

    def configure(self, settings: dict) -> None:
        with self.lock:
            self.latency_s = float(settings.get("latency_s", 0.0))
            self.admit = settings.get("admit_events_per_second")
            self.tokens = float(self.admit or 0)
            self.refilled = time.monotonic()
            self.events = self.requests = self.throttled = self.in_flight = self.peak_in_flight = 0
            # The sending phase: from the first request of more than one event in (the job's credential
            # check sends one event alone, before it reads and shuffles the records) to the last answer out.
            self.first_at = self.last_at = 0.0
            self.timeline = []  # (seconds since the first request, events admitted, or -1 for a 429)

    def admit_batch(self, events: int) -> bool:
        with self.lock:
            if not self.admit:
                return True
            now = time.monotonic()
            self.tokens = min(float(self.admit), self.tokens + (now - self.refilled) * self.admit)
            self.refilled = now
            if self.tokens < events:
                return False
            self.tokens -= events
            return True

    def stats(self) -> dict:
        with self.lock:
            return {"events": self.events, "requests": self.requests, "throttled": self.throttled,
                    "peak_in_flight": self.peak_in_flight, "sending_s": self.last_at - self.first_at,
                    "timeline": list(self.timeline)}


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, 40 ms delayed-ACK stalls

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(200, json.dumps(STATE.stats()).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/configure":
            STATE.configure(json.loads(body or b"{}"))
            return self._answer(200, b"{}")
        arrived = time.monotonic()
        with STATE.lock:
            STATE.requests += 1
            STATE.in_flight += 1
            STATE.peak_in_flight = max(STATE.peak_in_flight, STATE.in_flight)
        try:
            raw = zlib.decompress(body, 31) if self.headers.get("Content-Encoding") == "gzip" else body
            # numpy counts newlines 5x faster than bytes.count: the receiver shares the job's 2 cores
            events = int(np.count_nonzero(np.frombuffer(raw, np.uint8) == NEWLINE)) + (not raw.endswith(b"\n"))
            if events > 1:
                with STATE.lock:
                    STATE.first_at = STATE.first_at or arrived
            if STATE.latency_s:
                time.sleep(STATE.latency_s)
            if not STATE.admit_batch(events):
                with STATE.lock:
                    STATE.throttled += 1
                    STATE.timeline.append((round(time.monotonic() - (STATE.first_at or arrived), 2), -1))
                return self._answer(429, RATE_LIMITED)
            with STATE.lock:
                STATE.events += events
                STATE.timeline.append((round(time.monotonic() - (STATE.first_at or arrived), 2), events))
            self._answer(200, OK_BODY.format(events).encode())
        finally:
            with STATE.lock:
                STATE.in_flight -= 1
                STATE.last_at = time.monotonic()


def serve(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 128
    server.serve_forever()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
