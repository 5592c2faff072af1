"""HTTP transports for the sender: real (requests) and dry-run. Both speak the same tiny protocol."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.utils

from mp_spark.config import ConfigError

# Where a CA bundle (a file, or a directory of certificates) can be named: requests' own variables, in
# its order, then OpenSSL's, which requests ignores.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
# The causes of no answer that a stranger reading the log can act on, in our words (the OS's message is
# fine, but requests' around it may quote the request).
NETWORK_CAUSES = ((ConnectionRefusedError, "the connection was refused"),
                  (socket.gaierror, "the host name did not resolve"),
                  (ConnectionResetError, "the connection was reset"))


class TransportError(Exception):
    """The request did not get an HTTP answer: connection refused or reset, a timeout (worth trying again),
    or a certificate that did not verify (not worth it: `retryable` is false)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)


class Transport(Protocol):
    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response: ...

    def close(self) -> None: ...


class RequestsTransport:
    """One `requests.Session` per Spark task, its pool as large as the task's requests in flight.

    The session does not read the environment itself (trust_env): it would look the proxy settings
    up on every request (a third of requests' CPU per call on loopback), and take credentials from
    ~/.netrc over the Authorization header. Instead the proxy settings (HTTPS_PROXY, HTTP_PROXY,
    NO_PROXY, in either case, as requests reads them) are read once per host, and the CA bundle once.
    """

    def __init__(self, pool_size: int = 1) -> None:
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.verify = trusted_certificates(os.environ)
        self._proxies: dict[str, dict[str, str]] = {}
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
        host = urlsplit(url).netloc
        if host not in self._proxies:
            self._proxies[host] = requests.utils.get_environ_proxies(url)
        try:
            answer = self._session.request(method, url, data=body, headers=dict(headers), timeout=timeout_s,
                                           proxies=self._proxies[host])
        except requests.RequestException as exc:
            raise TransportError(describe(exc), retryable=not certificate_refused(exc)) from None
        return Response(answer.status_code, answer.content, answer.headers)

    def close(self) -> None:
        self._session.close()


def host_of(url: str) -> str:
    """The host and port of a URL, without any user:password@ before them."""
    return urlsplit(url).netloc.rpartition("@")[2]


def trusted_certificates(environ: Mapping[str, str]) -> str | bool:
    """What verifies the server's certificate: the CA bundle named by the first of CA_BUNDLE_VARIABLES
    that is set, else requests' own (certifi's). Never False: TLS is always verified."""
    for name in CA_BUNDLE_VARIABLES:
        path = environ.get(name)
        if path:
            if not os.path.exists(path):
                raise ConfigError(f"{name}={path}: no such file or directory (it must name the CA bundle that "
                                  "signed Mixpanel's certificate, or a TLS-inspecting proxy's)")
            return path
    return True


def describe(exc: requests.RequestException) -> str:
    """What went wrong, without requests' message: it can quote the request, which carries credentials.

    The exception's type and, for the causes in NETWORK_CAUSES, which it was; for a certificate that
    did not verify, OpenSSL's reason, which names nothing of the request.
    """
    refused = certificate_refused(exc)
    if refused is None:
        cause = next((words for inner in wrapped(exc) for kind, words in NETWORK_CAUSES if isinstance(inner, kind)),
                     None)
        return f"{type(exc).__name__}: {cause}" if cause else type(exc).__name__
    return (f"{type(exc).__name__}: the server's certificate did not verify ({refused.verify_message}): "
            "set REQUESTS_CA_BUNDLE or SSL_CERT_FILE to the CA bundle that signed it")


def certificate_refused(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    return next((e for e in wrapped(exc) if isinstance(e, ssl.SSLCertVerificationError)), None)


def wrapped(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception inside it: requests and urllib3 keep the cause in args and `reason`."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            inner = (*current.args, getattr(current, "reason", None), current.__cause__, current.__context__)
            pending += [e for e in inner if isinstance(e, BaseException)]


class DryRunTransport:
    """Accepts every batch without sending it, so a dry run exercises everything but the network:
    it answers each as Mixpanel answers a batch it took whole (`accepted`, the endpoint's)."""

    def __init__(self, accepted: bytes) -> None:
        self._accepted = accepted

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
        return Response(200, self._accepted)

    def close(self) -> None:
        pass
