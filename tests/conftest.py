from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from mp_spark.session import local_builder
from tests.fake_mixpanel import FakeMixpanel


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One real local Spark session (with Delta) for the whole test run.

    The session time zone is deliberately not UTC: `time` must come out the same anyway.
    """
    builder = (
        SparkSession.builder.appName("mp-spark-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "America/Los_Angeles")
    )
    session = local_builder(builder, with_delta=True, master="local[2, 4]").getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# Zones whose rules break code that formats or reads times through the session time zone: a DST gap
# and overlap of an hour (Los Angeles, Berlin), of 30 minutes (Lord Howe), and a whole missing day
# (Apia skipped 2011-12-30).
SESSION_ZONES = ["UTC", "America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Apia"]


@pytest.fixture(params=SESSION_ZONES)
def session_zone(spark: SparkSession, request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once in each of SESSION_ZONES as spark.sql.session.timeZone, then restore the session's."""
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", request.param)
    yield request.param
    spark.conf.set("spark.sql.session.timeZone", before)


@pytest.fixture
def mixpanel() -> Iterator[FakeMixpanel]:
    """A Mixpanel-compatible /import server on 127.0.0.1, with strict validation and fault injection."""
    with FakeMixpanel() as server:
        yield server


@pytest.fixture
def service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MP_PROJECT_TOKEN", raising=False)
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_USER", "sa-user")
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "sa-secret")
