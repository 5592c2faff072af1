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
