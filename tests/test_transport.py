"""The real transport against servers on 127.0.0.1: answers, failures, proxies and certificates; and a
whole run through a proxy to a Mixpanel served over HTTPS."""

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from mp_spark.config import ConfigError
from mp_spark.transport import CA_BUNDLE_VARIABLES, RequestsTransport, Response, TransportError
from tests.certificates import new_authority, server_certificate
from tests.fake_mixpanel import FakeMixpanel
from tests.forward_proxy import ForwardProxy
from tests.test_backfill_e2e import CHECK, run_job, summary_of, write_config

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY")
SA_AUTHORIZATION = "Basic c2EtdXNlcjpzYS1zZWNyZXQ="  # sa-user:sa-secret, the fake's service account


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


@pytest.fixture(autouse=True)
def no_proxy_or_ca_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets what it needs: none of the machine's proxy or CA settings apply."""
    for name in (*PROXY_VARIABLES, *CA_BUNDLE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a certificate it signed for 127.0.0.1, and another CA that signed nothing of ours."""
    root = tmp_path_factory.mktemp("tls")
    authority = new_authority("mp-spark test CA")
    cert, key = server_certificate(authority, root)
    return {"ca": authority.write(root / "ca.pem"), "other_ca": new_authority("someone else").write(root / "other.pem"),
            "cert": cert, "key": key}


@pytest.fixture
def https_mixpanel(tls: dict[str, Path]) -> Iterator[FakeMixpanel]:
    with FakeMixpanel(certificate=(str(tls["cert"]), str(tls["key"]))) as fake:
        yield fake


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as forward_proxy:
        yield forward_proxy


def import_events(mixpanel: FakeMixpanel, names: list[str]) -> list[int]:
    """POST one event per name to /import from one transport, as a sender does; the HTTP statuses."""
    transport = RequestsTransport()
    try:
        return [post_event(transport, mixpanel, name).status for name in names]
    finally:
        transport.close()


def post_event(transport: RequestsTransport, mixpanel: FakeMixpanel, name: str) -> Response:
    event = {"event": name, "properties": {"time": int(time.time() * 1000), "distinct_id": "u1", "$insert_id": name}}
    headers = {"Authorization": SA_AUTHORIZATION, "Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
    return transport.send("POST", f"{mixpanel.url}/import?strict=1&project_id={mixpanel.project_id}",
                          gzip.compress(json.dumps(event).encode() + b"\n"), headers, 10)


def received(mixpanel: FakeMixpanel) -> list[str]:
    return sorted(event["event"] for event in mixpanel.unique_events.values())


def test_requests_go_through_the_environment_s_proxy(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", server)  # clusters often reach the internet only through one
    transport = RequestsTransport()
    answer = transport.send("POST", "http://mixpanel.invalid/import?strict=1", b"x", {}, 5)
    assert answer.status == 200 and Recorder.seen == ["http://mixpanel.invalid/import?strict=1"]


def test_no_answer_is_a_transport_error_that_says_nothing_of_the_request() -> None:
    with pytest.raises(TransportError) as failure:
        RequestsTransport().send("POST", "http://127.0.0.1:9/import", b"x", {"Authorization": "Basic c2VjcmV0"}, 2)
    assert str(failure.value) == "ConnectionError: the connection was refused"


def test_a_host_that_does_not_resolve_is_said_so() -> None:
    with pytest.raises(TransportError) as failure:  # .invalid never resolves (RFC 6761)
        RequestsTransport().send("POST", "http://mixpanel.invalid/import", b"x", {}, 2)
    assert str(failure.value) == "ConnectionError: the host name did not resolve"


@pytest.mark.parametrize(("proxy_variable", "ca_variable"), [("HTTPS_PROXY", "REQUESTS_CA_BUNDLE"),
                                                             ("https_proxy", "SSL_CERT_FILE")])
def test_https_goes_through_the_proxy_s_tunnel_and_verifies_with_the_environment_s_ca_bundle(
    https_mixpanel: FakeMixpanel, proxy: ForwardProxy, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    proxy_variable: str, ca_variable: str,
) -> None:
    monkeypatch.setenv(proxy_variable, proxy.url)
    monkeypatch.setenv(ca_variable, str(tls["ca"]))

    assert import_events(https_mixpanel, ["a", "b", "c"]) == [200, 200, 200]

    assert received(https_mixpanel) == ["a", "b", "c"]
    # Every connection the server accepted came through a tunnel of the proxy (one, kept alive).
    assert proxy.tunnels == [f"127.0.0.1:{https_mixpanel.port}"] and https_mixpanel.connections == 1
    assert proxy.forwarded == []


def test_plain_http_goes_through_the_proxy_by_absolute_uri(
    mixpanel: FakeMixpanel, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)

    assert import_events(mixpanel, ["a", "b"]) == [200, 200]

    assert received(mixpanel) == ["a", "b"]
    assert len(proxy.forwarded) == mixpanel.requests == 2
    assert all(uri.startswith(f"{mixpanel.url}/import?strict=1") for uri in proxy.forwarded)


@pytest.mark.parametrize("no_proxy_variable", ["NO_PROXY", "no_proxy"])
def test_no_proxy_names_the_hosts_reached_directly(
    https_mixpanel: FakeMixpanel, proxy: ForwardProxy, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
    no_proxy_variable: str,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv(no_proxy_variable, "localhost,127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls["ca"]))

    assert import_events(https_mixpanel, ["direct"]) == [200]

    assert received(https_mixpanel) == ["direct"] and proxy.tunnels == [] and proxy.forwarded == []


def test_a_certificate_from_another_ca_fails_with_the_reason_and_nothing_of_the_request(
    https_mixpanel: FakeMixpanel, proxy: ForwardProxy, tls: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls["other_ca"]))

    with pytest.raises(TransportError) as failure:
        post_event(RequestsTransport(), https_mixpanel, "never")

    message = str(failure.value)
    assert not failure.value.retryable  # the same certificate will not verify next time either
    assert message.startswith("SSLError: the server's certificate did not verify (unable to get local issuer ")
    assert "REQUESTS_CA_BUNDLE or SSL_CERT_FILE" in message
    assert "c2EtdXNlcjpzYS1zZWNyZXQ" not in message and "/import" not in message and "project_id" not in message
    assert https_mixpanel.requests == 0 and len(proxy.tunnels) == 1


def test_tls_is_verified_without_a_ca_bundle_too(https_mixpanel: FakeMixpanel) -> None:
    with pytest.raises(TransportError, match="did not verify"):  # certifi's CAs did not sign the test certificate
        post_event(RequestsTransport(), https_mixpanel, "never")
    assert https_mixpanel.requests == 0


def test_a_ca_bundle_that_does_not_exist_is_a_config_error_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"^SSL_CERT_FILE=.*missing\.pem: no such file"):
        RequestsTransport()


def test_netrc_never_replaces_the_authorization_header(
    mixpanel: FakeMixpanel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))  # requests would send these credentials instead of ours
    monkeypatch.setenv("HOME", str(tmp_path))

    assert import_events(mixpanel, ["ours"]) == [200]


@pytest.fixture
def executor_env(spark: SparkSession) -> Iterator[dict[str, str]]:
    """The executors' environment variables, as spark.executorEnv.* sets them (in local mode the Python
    workers do not see changes to the driver's os.environ made after Spark started)."""
    environment = spark.sparkContext.environment
    before = dict(environment)
    yield environment
    environment.clear()
    environment.update(before)


def test_a_run_sends_every_request_through_the_proxy_and_verifies_with_the_ca_bundle(
    spark: SparkSession, executor_env: dict[str, str], https_mixpanel: FakeMixpanel, proxy: ForwardProxy,
    tls: dict[str, Path], service_account: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The driver (its one-event credentials check) and the executors (everything else) each read their
    own environment: the driver's shell, and spark.executorEnv.* for the executors."""
    network = {"HTTPS_PROXY": proxy.url, "REQUESTS_CA_BUNDLE": str(tls["ca"]),
               "NO_PROXY": "", "no_proxy": ""}  # whatever the machine's were when Spark started
    executor_env.update(network)
    for name, value in network.items():
        monkeypatch.setenv(name, value)
    source = tmp_path / "events"
    spark.range(600).select(
        F.format_string("user-%d", F.col("id") % 7).alias("user_id"), F.lit("Page View").alias("event_name"),
        F.timestamp_seconds(F.lit(1_717_200_000) + F.col("id")).alias("ts"), F.lit("pro").alias("plan"),
        F.col("id").alias("amount"),
    ).write.parquet(str(source))
    config = write_config(tmp_path, "parquet", str(source), https_mixpanel)

    assert run_job(config, "mixpanel.max_batch_events=100", "job.records_per_partition=200") == 0

    assert len(https_mixpanel.unique_events) == https_mixpanel.raw_arrivals - CHECK == 600
    assert summary_of(tmp_path)["imported"] == 600
    # Every connection the server accepted came through one of the proxy's tunnels, to it.
    assert len(proxy.tunnels) == https_mixpanel.connections > 0
    assert set(proxy.tunnels) == {f"127.0.0.1:{https_mixpanel.port}"}


def test_a_certificate_that_does_not_verify_stops_the_run_at_its_first_request_with_exit_2(
    https_mixpanel: FakeMixpanel, proxy: ForwardProxy, tls: dict[str, Path], service_account: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)  # to count the connections tried: one tunnel each
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls["other_ca"]))
    source = tmp_path / "events"
    source.mkdir()
    config = write_config(tmp_path, "json", str(source), https_mixpanel)
    (source / "events.json").write_text(json.dumps({"user_id": "u1", "event_name": "Page View", "ts": 1717200000,
                                                   "plan": "pro", "amount": 1}))

    assert run_job(config) == 2  # not retried: an environment problem, found before sending
    error = capsys.readouterr().err
    assert "did not verify" in error and "REQUESTS_CA_BUNDLE" in error
    assert len(proxy.tunnels) == 1 and https_mixpanel.requests == 0
