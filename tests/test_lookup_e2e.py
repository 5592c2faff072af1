"""Lookup tables from the same job (job.kind lookup_table), end to end against the fake server."""

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession

import mp_spark.lookup
from mp_spark.config import ConfigError, LookupTableMappingConfig
from mp_spark.lookup import to_lookup_rows
from tests.fake_mixpanel import FakeMixpanel, Faults
from tests.test_backfill_e2e import FAST_RETRIES, run_job, summary_of
from tests.test_mapping import DST_WALL_CLOCKS, mixpanel_date, wall_clock_rows

LAUNCHED = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
PRODUCTS = 50


@pytest.fixture(scope="module")
def products(spark: SparkSession) -> DataFrame:
    rows = [(f"sku-{i:02d}", f"Product, \"{i}\"", 9.5 + i, LAUNCHED, ["a", f"t{i % 2}"]) for i in range(PRODUCTS)]
    return spark.createDataFrame(rows, "sku string, name string, price double, launched timestamp, tags array<string>")


@pytest.fixture(scope="module")
def product_sources(products: DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("products")
    products.write.parquet(str(root / "parquet"))
    products.write.format("delta").save(str(root / "delta"))
    products.write.json(str(root / "json"))
    return {fmt: str(root / fmt) for fmt in ("parquet", "delta", "json")}


def lookup_config(tmp_path: Path, source_format: str, path: str, server: FakeMixpanel, **mapping: object) -> str:
    columns = {"name": "name", "price": "price", "launched": "timestamp(launched)", "tags": "tags"}
    config = {
        "source": {"format": source_format, "path": path},
        "mapping": {"lookup_table_id": "products", "key": "sku", "columns": columns, **mapping},
        "mixpanel": {"project_id": server.project_id, "api_host": server.url},
        "job": {"kind": "lookup_table", "results_path": str(tmp_path / "results")},
    }
    target = tmp_path / "lookup.json"
    target.write_text(json.dumps(config))
    return str(target)


@pytest.mark.parametrize("source_format", ["parquet", pytest.param("delta", marks=pytest.mark.connect), "json"])
def test_a_lookup_table_is_replaced_with_the_source_key_first(
    product_sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    source_format: str,
) -> None:
    mixpanel.set_faults(Faults(rate_429=0.5, rate_5xx=0.3, seed=2))  # one request: retried until it lands

    assert run_job(lookup_config(tmp_path, source_format, product_sources[source_format], mixpanel)) == 0

    assert mixpanel.lookup_table_headers["products"] == ["sku", "name", "price", "launched", "tags"]
    table = {row["sku"]: row for row in mixpanel.lookup_tables["products"]}
    assert len(table) == PRODUCTS
    assert table["sku-01"] == {"sku": "sku-01", "name": 'Product, "1"', "price": "10.5",
                               "launched": "2024-01-02T03:04:05Z", "tags": '["a","t1"]'}
    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["imported"], summary["rejected"], summary["invalid"]) == (
        PRODUCTS, PRODUCTS, 0, 0)


def test_long_values_are_cut_like_event_properties_and_counted_as_trimmed(
    product_sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    long_names = {"name": "if(price > 30, repeat('é', 200), name)"}  # 400 bytes for products 21 to 49
    assert run_job(lookup_config(tmp_path, "parquet", product_sources["parquet"], mixpanel, columns=long_names)) == 0

    table = {row["sku"]: row for row in mixpanel.lookup_tables["products"]}
    assert table["sku-30"]["name"] == "é" * 127  # 254 bytes: a character is never split
    assert table["sku-01"]["name"] == 'Product, "1"'
    assert summary_of(tmp_path)["trimmed"] == PRODUCTS - 21


def test_rows_without_a_unique_key_are_set_aside(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    source = tmp_path / "dupes"
    spark.createDataFrame([("a", "1"), ("a", "2"), (None, "3"), ("b", "4")], "sku string, name string") \
        .write.parquet(str(source))
    config = lookup_config(tmp_path, "parquet", str(source), mixpanel, columns={"name": "name"})

    assert run_job(config) == 1

    assert mixpanel.lookup_tables["products"] == [{"sku": "a", "name": "1"}, {"sku": "b", "name": "4"}]
    assert summary_of(tmp_path)["invalid"] == 2
    reasons = sorted(r.message for r in spark.read.json(str(tmp_path / "results" / "rejected")).collect())
    assert reasons == ["duplicate key: only its first row (in CSV order) is sent", "the key is null or empty"]


def test_a_table_over_mixpanel_s_limit_is_refused_before_any_request(
    product_sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(mp_spark.lookup, "MAX_TABLE_BYTES", 1000)  # stands in for 100 MB

    assert run_job(lookup_config(tmp_path, "parquet", product_sources["parquet"], mixpanel)) == 2
    assert "100 MB" in capsys.readouterr().err and mixpanel.requests == 0


def test_lookup_tables_need_a_service_account(
    product_sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    for name in ("MP_SERVICE_ACCOUNT_USER", "MP_SERVICE_ACCOUNT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MP_PROJECT_TOKEN", "tok-123")

    assert run_job(lookup_config(tmp_path, "parquet", product_sources["parquet"], mixpanel), *FAST_RETRIES) == 2
    assert mixpanel.requests == 0


@pytest.mark.connect
def test_a_refused_service_account_exits_2_and_a_failing_mixpanel_exits_3_with_the_reason(
    product_sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = lookup_config(tmp_path, "parquet", product_sources["parquet"], mixpanel)
    mixpanel.set_faults(Faults(rate_5xx=1.0))
    assert run_job(config, "mixpanel.max_attempts=2") == 3
    error = capsys.readouterr().err
    assert "gave up after 2 attempts; last: HTTP 5" in error
    assert "run the job again" in error and "--resume" not in error  # a table goes whole: nothing to finish

    mixpanel.set_faults(Faults())
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "not-the-secret")
    before = mixpanel.requests
    assert run_job(config) == 2
    assert mixpanel.requests - before == 1  # the upload is the one request: nothing retried
    error = capsys.readouterr().err
    assert "Mixpanel answered 401" in error and "not-the-secret" not in error


def test_lookup_times_are_rfc3339_utc_in_every_session_zone(spark: SparkSession, session_zone: str) -> None:
    rows = wall_clock_rows(spark, DST_WALL_CLOCKS)
    mapping = LookupTableMappingConfig(lookup_table_id="t", key="wall",
                                       columns={"at": "instant", "wall clock": "ntz", "day": "to_date(ntz)"})
    table, header = to_lookup_rows(mapping)(rows)
    assert header == "wall,at,wall clock,day"
    lines = [next(csv.reader([row.line])) for row in table.collect()]
    assert len(lines) == len(DST_WALL_CLOCKS)
    for wall, at, wall_clock, day in lines:
        assert (at, wall_clock, day) == (mixpanel_date(wall) + "Z", mixpanel_date(wall) + "Z", wall[:10])


def test_every_other_column_goes_under_its_own_name_though_it_holds_a_dot_or_a_backtick(spark: SparkSession) -> None:
    rows = spark.createDataFrame([("sku-1", "Mug", "x")], "sku string, `odd``name` string, `page.url` string")
    table, header = to_lookup_rows(LookupTableMappingConfig(lookup_table_id="t", key="sku"))(rows)
    assert header == "sku,odd`name,page.url"
    assert [row.line for row in table.collect()] == ["sku-1,Mug,x"]


def test_binary_columns_are_refused_when_named_and_left_out_with_a_warning_otherwise(
    spark: SparkSession, caplog: pytest.LogCaptureFixture
) -> None:
    rows = spark.createDataFrame([("sku-1", "Mug", bytearray(b"\x89PNG"))], "sku string, name string, thumb binary")
    named = LookupTableMappingConfig(lookup_table_id="t", key="sku", columns={"name": "name", "thumb": "thumb"})
    with pytest.raises(ConfigError, match=r"^mapping\.columns\.thumb is binary.*hex\("):
        to_lookup_rows(named)(rows)

    with caplog.at_level("WARNING", logger="mp_spark.mapping"):
        table, header = to_lookup_rows(LookupTableMappingConfig(lookup_table_id="t", key="sku"))(rows)
    assert (header, [row.line for row in table.collect()]) == ("sku,name", ["sku-1,Mug"])
    assert [r.getMessage() for r in caplog.records] == [
        "not sending binary values (Mixpanel has no type for bytes: map hex(col) or base64(col) instead): thumb"]
